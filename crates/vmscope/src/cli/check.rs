//! `vmscope check-config [FILE]`: load and validate exactly what `serve`
//! would run with (defaults, the file, then `VMSCOPE_*` variables, including
//! `VMSCOPE_LOG`), say what is wrong, or say which values came from the
//! environment; with a fleet ledger (`ledger.database_url`), whether its
//! PostgreSQL answers (a warning, not an error: the agent spools).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{Failure, print_stdout};
use crate::config::Config;

pub fn run(file: Option<PathBuf>) -> Result<(), Failure> {
    // The environment is part of the check: a pre-start check that passed
    // while `serve` then refused its VMSCOPE_* values would be worthless.
    let cfg = Config::load(file.as_deref()).map_err(Failure::usage)?;
    // serve would start, but without the watchdog's persistence and with a
    // usage ledger recording nothing: say so.
    if cfg.watchdog.enabled || cfg.ledger.enabled {
        cfg.store.check().map_err(Failure::usage)?;
    }
    // The web config as serve loads it (an error names its file and key).
    let web = super::serve::web_config(&cfg).map_err(Failure::usage)?;
    // Deprecation warnings only once every check passed: an error, like
    // any config error, is the first line on stderr and names the key as
    // it was written.
    for r in &cfg.renamed_keys {
        // stderr, like every diagnostic; a closed stderr is not an error here.
        let _ =
            std::io::Write::write_all(&mut std::io::stderr(), format!("warning: {r}\n").as_bytes());
    }
    let what = match &file {
        Some(f) => f.display().to_string(),
        None => "defaults (no file)".to_owned(),
    };
    let mut out = format!(
        "{what}: ok (listen {}, interval {})\n",
        cfg.listen,
        humantime::format_duration(cfg.interval)
    );
    if let (Some((w, tls)), Some(path)) = (&web, &cfg.http.web_config_file) {
        let _ = writeln!(
            out,
            "  web config {}: ok ({} users, {} tokens, {})",
            path.display(),
            w.users.len(),
            w.tokens.len(),
            if tls.is_some() { "TLS" } else { "no TLS" }
        );
    }
    for (key, var) in &cfg.from_env {
        // Values are not printed: some variables may hold secrets.
        let _ = writeln!(out, "  {key} from environment variable {var}");
    }
    // A fleet ledger that cannot be reached is not a configuration error
    // (the agent spools until it can), but worth a line.
    if cfg.ledger.enabled
        && let Ok(Some(target)) = cfg.ledger.fleet()
    {
        let pg = crate::store::postgres::PgLedger::new(
            target,
            1,
            cfg.ledger.database_timeout,
            std::sync::Arc::new(crate::store::DbMetrics::new()),
        );
        match pg.ping() {
            Ok(()) => {
                let _ = writeln!(out, "  ledger.database_url: {} reachable", pg.describe());
            }
            Err(e) => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!(
                        "warning: ledger.database_url: {e}; usage rows would wait in the local spool\n"
                    )
                    .as_bytes(),
                );
            }
        }
    }
    print_stdout(&out)
}
