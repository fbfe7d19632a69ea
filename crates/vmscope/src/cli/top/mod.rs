//! `vmscope top`: the operator's terminal view of the VMs on a host, and
//! its batch mode for scripts.
//!
//! - [`sample`]: one read (counters, gauges, alerts) from either source;
//! - [`model`]: the pure state: rates between two reads, sort, filter,
//!   grouping by owner, selection, screens, keys;
//! - [`view`]: drawing the model with ratatui (tested on `TestBackend`);
//! - [`batch`]: CSV and JSON lines;
//! - [`source`]: a running agent's API (`--url`) or in-process collection
//!   like `vmscope vms`; here: the terminal, signals and the loop.
//!
//! Reads: the terminal's keys; the source every `-d` seconds on a thread of
//! its own. Fails: a bad flag or address is status 2; a first read that
//! fails (unreachable agent, refused token) is status 1 with the reason;
//! a read failing later is shown in the header while the last figures
//! stay. The terminal is restored on every way out: `q`, Ctrl-C, SIGTERM,
//! SIGHUP, an error and a panic.

pub mod batch;
pub mod model;
pub mod sample;
pub mod source;
pub mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::{CommonArgs, Failure, init_logging, load_config, print_stdout};
use model::{Flow, Key, Model};
use source::{Local, Remote, Source};

/// `--output` of batch mode.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutput {
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Seconds between refreshes (0.1 to 3600).
    #[arg(
        short = 'd',
        long = "delay",
        value_name = "SECONDS",
        default_value_t = 1.0
    )]
    delay: f64,
    /// Read a running agent's API (e.g. http://127.0.0.1:9847) instead of
    /// measuring here: no second collector on the host.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// A bearer token for --url, read from this file (first line).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A bearer token for --url. Prefer --token-file or VMSCOPE_TOKEN: a
    /// flag's value is visible to other users in `ps`.
    #[arg(
        long,
        env = "VMSCOPE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Extra CA certificate(s) (PEM) to trust for an https --url.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// No screen: print one line per VM per refresh (see --output).
    #[arg(long)]
    batch: bool,
    /// Stop after N refreshes [default: never].
    #[arg(short = 'n', long = "iterations", value_name = "N")]
    iterations: Option<u64>,
    /// Batch output format: csv (a header line, then rows) or json (one
    /// object per line).
    #[arg(long, short = 'o', value_enum, default_value_t = BatchOutput::Csv, requires = "batch")]
    output: BatchOutput,
}

/// The keys, for `--help` and the manual page.
pub const KEYS_HELP: &str = "\
Keys:
  P M N T     sort by CPU, memory (RSS), name, CPU time; the same key again reverses
  F < >       choose the sort column from a menu / step left and right; R reverses
  /           filter: a case-insensitive regex over name, id and owner
              (name:RE or owner:RE for one of them); Esc clears it
  g           group by owner (per-owner totals); Enter on an owner lists its VMs
  Enter, Esc  one VM's detail (per vCPU, per TAP, its alerts) / back
  Up Down PgUp PgDn Home End   move the selection
  q, Ctrl-C   quit

Columns: CPU% is host CPU in % of one core (200 = two cores); GUEST% and
STEAL% are guest code and vCPU run-queue wait in % of the VM's vCPUs. NO_COLOR
turns colour off. Exit status: 0 ok, 1 the agent or collection failed at
start, 2 bad usage.";

/// How long one read of an agent may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: TopArgs) -> Result<(), Failure> {
    if !(args.delay.is_finite() && (0.1..=3600.0).contains(&args.delay)) {
        return Err(Failure::usage(anyhow::anyhow!(
            "-d/--delay: {} is out of range (0.1 to 3600 seconds)",
            args.delay
        )));
    }
    if args.iterations == Some(0) {
        return Err(Failure::usage(anyhow::anyhow!(
            "-n/--iterations: give at least 1"
        )));
    }
    if !args.batch && !std::io::stdout().is_terminal() {
        return Err(Failure::usage(anyhow::anyhow!(
            "stdout is not a terminal: use --batch (with --output csv or json) for scripts"
        )));
    }
    let delay = Duration::from_secs_f64(args.delay);
    let (source, shown) = open_source(&args)?;
    if args.batch {
        run_batch(source, delay, args.iterations, args.output)
    } else {
        let chrome = view::Chrome {
            source: shown,
            refresh_seconds: args.delay,
            colour: colour_wanted(),
        };
        run_screen(source, delay, args.iterations, chrome)
    }
}

/// Colour unless `NO_COLOR` is set to anything but empty (no-color.org).
pub fn colour_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn open_source(args: &TopArgs) -> Result<(Box<dyn Source>, String), Failure> {
    let Some(url) = &args.url else {
        // VMSCOPE_TOKEN set in the environment is fine here: it is for --url.
        if args.token_file.is_some() || args.ca_file.is_some() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--token-file and --ca-file are for --url (without it, top measures locally)"
            )));
        }
        let mut cfg = load_config(&args.common)?;
        if cfg.log.level == "info" && !cfg.is_from_env("log.level") {
            // Log lines would tear the screen: only problems, on stderr.
            cfg.log.level = "error".into();
        }
        init_logging(&cfg);
        let local = Local::new(&cfg)
            .context("setting up collection")
            .map_err(Failure::runtime)?;
        return Ok((Box::new(local), "local".to_owned()));
    };
    let base = source::parse_url(url).map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => Some(read_token(path).map_err(Failure::usage)?),
        (None, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        _ => None,
    };
    let remote =
        Remote::new(&base, token, args.ca_file.clone(), READ_TIMEOUT).map_err(Failure::usage)?;
    Ok((Box::new(remote), source::display_url(&base)))
}

/// The token file's first line, trimmed.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file: cannot read {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        anyhow::bail!("--token-file: {} is empty", path.display());
    }
    Ok(token.to_owned())
}

fn run_batch(
    mut source: Box<dyn Source>,
    delay: Duration,
    iterations: Option<u64>,
    output: BatchOutput,
) -> Result<(), Failure> {
    let mut model = Model::new();
    model.sort = model::Column::Name;
    model.descending = false;
    model.update(source.read().map_err(Failure::runtime)?);
    if output == BatchOutput::Csv {
        print_stdout(&batch::csv_header())?;
    }
    let mut done = 0u64;
    while iterations.is_none_or(|n| done < n) {
        std::thread::sleep(delay);
        model.update(source.read().map_err(Failure::runtime)?);
        let time = batch::timestamp(model.sample().map_or(0.0, |s| s.at));
        let mut out = String::new();
        for l in model.lines() {
            out.push_str(&match output {
                BatchOutput::Csv => batch::csv_line(&l, &time),
                BatchOutput::Json => batch::json_line(&l, &time),
            });
        }
        print_stdout(&out)?;
        done += 1;
    }
    Ok(())
}

/// Puts the terminal back: cooked mode, the main screen, the cursor.
fn restore_terminal() {
    let _ = ratatui::crossterm::terminal::disable_raw_mode();
    let _ = ratatui::crossterm::execute!(
        std::io::stdout(),
        ratatui::crossterm::terminal::LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

/// Restores the terminal when dropped: on return, error or unwinding.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn run_screen(
    mut source: Box<dyn Source>,
    delay: Duration,
    iterations: Option<u64>,
    chrome: view::Chrome,
) -> Result<(), Failure> {
    // The first read before the screen: a wrong address or token is a
    // plain error message, not a flash of an empty screen.
    let first = source.read().map_err(Failure::runtime)?;
    let mut model = Model::new();
    model.update(first);

    let quit = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&quit))
            .context("installing signal handlers")
            .map_err(Failure::runtime)?;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));

    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = source::spawn(source, delay, tx, Arc::clone(&stop))
        .context("starting the reader thread")
        .map_err(Failure::runtime)?;

    let result = (|| -> anyhow::Result<()> {
        let _restore = Restore;
        ratatui::crossterm::terminal::enable_raw_mode().context("terminal raw mode")?;
        ratatui::crossterm::execute!(
            std::io::stdout(),
            ratatui::crossterm::terminal::EnterAlternateScreen,
            ratatui::crossterm::terminal::Clear(ratatui::crossterm::terminal::ClearType::All),
            ratatui::crossterm::cursor::Hide
        )
        .context("terminal alternate screen")?;
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let mut terminal = ratatui::Terminal::new(backend).context("terminal")?;
        // Not `terminal.clear()`: it asks the terminal for the cursor
        // position, which a pseudo-terminal without a reader never answers.
        let mut reads = 1u64;
        let mut dirty = true;
        while !quit.load(Ordering::Relaxed) {
            while let Ok(r) = rx.try_recv() {
                match r {
                    Ok(s) => model.update(s),
                    Err(e) => model.failed(e.to_string()),
                }
                reads += 1;
                dirty = true;
            }
            if dirty {
                terminal
                    .draw(|f| view::draw(f, &model, &chrome))
                    .context("drawing")?;
                dirty = false;
            }
            if iterations.is_some_and(|n| reads >= n) {
                break;
            }
            if event::poll(Duration::from_millis(100)).context("reading keys")? {
                match event::read().context("reading keys")? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        if let Some(key) = map_key(k.code, k.modifiers)
                            && model.key(key) == Flow::Quit
                        {
                            break;
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    // The reader ends within one read timeout; no need to wait for it.
    drop(reader);
    result.map_err(Failure::runtime)
}

fn map_key(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}
