//! Command-line interface: `serve`, `vms`, `check-config`.
//!
//! Errors reach the user once, at this edge, printed with their causes
//! (`error: cannot read config file x.toml: No such file or directory`) and
//! turned into an exit code: 0 ok, 1 runtime failure, 2 bad usage or config.

mod check;
mod serve;
mod vms;

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
    /// Validate a configuration file and explain what is wrong.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
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
    /// Address to listen on [default: 127.0.0.1:9847].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Collection interval in seconds [default: 5].
    #[arg(long, value_name = "SECONDS")]
    interval: Option<f64>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
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

/// A failure meant for the user: message (with causes) and exit code.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }
    fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Vms(a) => vms::run(a),
        Command::CheckConfig { file } => check::run(&file),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn load_config(common: &CommonArgs) -> Result<Config, Failure> {
    Config::load(common.config.as_deref()).map_err(Failure::usage)
}

/// Logs go to stderr (stdout is for command output), filtered by
/// `VMSCOPE_LOG` if set, else by the config's `log.level`.
fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("VMSCOPE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cfg.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Said once at start: the config was read before logging was set up.
    for r in &cfg.renamed_keys {
        tracing::warn!(old = r.old, new = r.new, "{r}");
    }
}
