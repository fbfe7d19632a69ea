//! Command-line interface: `serve`, `vms`, `top`, `owners`, `usage`, `token`,
//! `check-config`, and the hidden `man` (the manual pages, for packaging).
//!
//! Errors reach the user once, at this edge, printed with their causes
//! (`error: cannot read config file x.toml: No such file or directory`) and
//! turned into an exit code: 0 ok, 1 runtime failure, 2 bad usage or config.
//!
//! Output goes through `print_stdout`, never `println!` (which panics when
//! stdout fails). A closed stdout (`vmscope vms | head -1`) ends the command
//! quietly with status 0, as ripgrep does: the reader got what it wanted.
//! Any other write error (`> /dev/full`) is one `error:` line and status 1.

mod check;
mod logfile;
mod logfmt;
mod malloc;
mod man;
mod owners;
pub mod serve;
mod token;
pub mod top;
mod usage;
mod vms;

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "vmscope",
    version,
    about = "Observability agent for virtual-machine hosts"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: collect on an interval and serve /metrics and the API.
    Serve(ServeArgs),
    /// Print the VMs on this host now, measured over a short window.
    Vms(VmsArgs),
    /// A full-screen, refreshing view of the VMs (like virt-top), from a
    /// running agent (--url) or measured here; --batch for CSV/JSON lines.
    #[command(after_long_help = top::KEYS_HELP)]
    Top(top::TopArgs),
    /// Print who uses this host now: per user and project, their VMs,
    /// vCPUs, CPU, memory and network, measured over a short window.
    Owners(OwnersArgs),
    /// Usage totals from the ledger in the state database (no agent
    /// needed; the same totals as GET /api/v1/usage).
    Usage(UsageArgs),
    /// Bearer tokens for the web config's `vmscope.tokens`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate the configuration `serve` would run with (the file, then
    /// VMSCOPE_* variables, and the web config it names) and explain what
    /// is wrong.
    CheckConfig {
        /// The TOML file to check (same as -c FILE).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Configuration file (TOML).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write the manual pages (vmscope.1, vmscope-serve.1, ...) into a
    /// directory: used to build the Debian package.
    #[command(hide = true)]
    Man {
        /// The directory to write into (must exist).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a new random token (once: vmscope keeps only its SHA-256) and
    /// the `vmscope.tokens` entry to paste into the web config file.
    New(TokenNewArgs),
}

#[derive(clap::Args, Debug)]
pub struct TokenNewArgs {
    /// What the token may see: admin, user:KEY or project:KEY;
    /// repeat for several tenants.
    #[arg(long, required = true, value_name = "SCOPE")]
    scope: Vec<String>,
    /// A name for logs (A-Z, a-z, 0-9, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// Lifetime (e.g. 90d, 12h) or an RFC 3339 time in UTC; none: no expiry.
    #[arg(long)]
    expires: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Configuration file (TOML). VMSCOPE_* environment variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Address to listen on, an IP address and port [default: 127.0.0.1:9847].
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
    listen: Option<SocketAddr>,
    /// Collection interval: a duration ("5s", "500ms") or a number of
    /// seconds [default: 5s].
    #[arg(long, value_name = "SECONDS")]
    #[arg(value_parser = parse_interval)]
    interval: Option<std::time::Duration>,
    /// The exporter-toolkit web configuration file (basic auth, bearer
    /// tokens, allow-lists, rate limits) [default: http.web_config_file].
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    /// Also write the log to this file, rotated by size [default: log.file].
    #[arg(long = "log.file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Rotate the log file before it grows past this size (e.g. 3MiB,
    /// 500kB, or bytes) [default: log.max_size, 3MiB].
    #[arg(long = "log.max-size", value_name = "SIZE")]
    log_max_size: Option<crate::config::ByteSize>,
    /// Rotated log files kept (FILE.1 .. FILE.N) [default: log.keep, 5].
    #[arg(long = "log.keep", value_name = "N")]
    log_keep: Option<u32>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum UsageOutput {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The state database [default: store.path of the configuration].
    #[arg(long, value_name = "FILE", conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// Read the fleet ledger in PostgreSQL (postgres://user:pw@host:port/db)
    /// [default: ledger.database_url of the configuration, if set].
    /// VMSCOPE_LEDGER__DATABASE_URL keeps the password off the command line.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Only this host's rows.
    #[arg(long)]
    host: Option<String>,
    /// Start (RFC 3339 in UTC, a date such as 2026-11-01, or Unix seconds)
    /// [default: to minus 24 hours].
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive, as --from [default: now].
    #[arg(long)]
    to: Option<String>,
    /// Group by user, project or vm [default: vm].
    #[arg(long)]
    by: Option<String>,
    /// One total per group per step (e.g. 1h, 1d) [default: the window].
    #[arg(long)]
    step: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = UsageOutput::Table)]
    output: UsageOutput,
}

#[derive(clap::Args, Debug)]
pub struct VmsArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds to measure rates over.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    window: f64,
}

/// `--kind` of `vmscope owners`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum KindArg {
    User,
    Project,
}

impl From<KindArg> for crate::model::identity::OwnerKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::User => Self::User,
            KindArg::Project => Self::Project,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct OwnersArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Output format (json: the /api/v1/owners entries).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Seconds to measure rates over.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    window: f64,
    /// Only owners of this kind.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
}

/// A failure meant for the user: message (with causes) and exit code. No
/// message for a reader that went away: that ends the command quietly.
pub struct Failure {
    code: u8,
    error: Option<anyhow::Error>,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: Some(error.into()),
        }
    }
    fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: Some(error.into()),
        }
    }
    /// Stdout was closed by its reader: stop, say nothing, status 0.
    fn reader_gone() -> Self {
        Failure {
            code: 0,
            error: None,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let res = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Vms(a) => vms::run(a),
        Command::Top(a) => top::run(a),
        Command::Owners(a) => owners::run(a),
        Command::Usage(a) => usage::run(a),
        Command::Token(TokenCommand::New(a)) => token::new(a),
        Command::CheckConfig { file, config } => check::run(file.or(config)),
        Command::Man { dir } => man::run(&dir),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => exit_with(f),
    }
}

fn exit_with(f: Failure) -> ExitCode {
    if let Some(error) = f.error {
        // stderr may be closed or full as well: nothing is left to tell then.
        let _ = writeln!(std::io::stderr().lock(), "error: {error:#}");
    }
    ExitCode::from(f.code)
}

/// clap's own output: `--help` and `--version` are command output (stdout,
/// same rules as every other), usage errors go to stderr with status 2.
/// `Error::exit` would print them with errors ignored.
fn clap_exit(e: clap::Error) -> ExitCode {
    use std::io::IsTerminal;
    let render = |terminal: bool| {
        if terminal {
            e.render().ansi().to_string()
        } else {
            e.render().to_string()
        }
    };
    if e.use_stderr() {
        let _ = write!(
            std::io::stderr().lock(),
            "{}",
            render(std::io::stderr().is_terminal())
        );
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    let text = render(std::io::stdout().is_terminal());
    match print_stdout(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => exit_with(f),
    }
}

/// Writes command output to stdout and flushes it. A closed pipe is
/// [`Failure::reader_gone`]; any other error names stdout and its cause.
pub(crate) fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(Failure::reader_gone()),
        Err(e) => Err(Failure::runtime(
            anyhow::Error::new(e).context("cannot write to stdout"),
        )),
    }
}

fn load_config(common: &CommonArgs) -> Result<Config, Failure> {
    Config::load(common.config.as_deref()).map_err(Failure::usage)
}

/// Logs go to stderr (stdout is for command output), filtered by
/// `log.level`, which `VMSCOPE_LOG` overrides (both checked when the config
/// is loaded). The text format escapes control characters in every field
/// (see [`logfmt`]); the JSON format is escaped by serde_json.
fn init_logging(cfg: &Config) {
    init_logging_to(cfg, None);
}

/// [`init_logging`], and with `file` the same lines (never coloured) go to
/// the log file too ([`logfile`]).
fn init_logging_to(cfg: &Config, file: Option<logfile::LogFile>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry, fmt};
    type Boxed = Box<dyn Layer<Registry> + Send + Sync>;
    fn layer<W>(format: LogFormat, writer: W, ansi: bool) -> Boxed
    where
        W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let l = fmt::layer().with_writer(writer).with_ansi(ansi);
        match format {
            LogFormat::Text => l.fmt_fields(logfmt::EscapingFields).boxed(),
            LogFormat::Json => l.json().boxed(),
        }
    }
    let filter = EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut layers = vec![layer(cfg.log.format, std::io::stderr, ansi)];
    if let Some(f) = file {
        layers.push(layer(cfg.log.format, f, false));
    }
    let _ = tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init();
    // Said once at start: the config was read before logging was set up.
    for r in &cfg.renamed_keys {
        tracing::warn!(old = r.old, new = r.new, "{r}");
    }
}

/// `--interval`: a humantime duration like the config file's (`"5s"`), or
/// a plain number of seconds as the flag always took (`--interval 1`).
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a number of seconds, at least 0"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (write e.g. 5s, 500ms or 2)"))
}
