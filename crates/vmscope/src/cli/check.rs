//! `vmscope check-config FILE`: load and validate, say what is wrong.

use std::path::Path;

use super::Failure;
use crate::config::Config;

pub fn run(file: &Path) -> Result<(), Failure> {
    // Only the file: the environment must not make a broken file look valid.
    let cfg = Config::load_with_env(Some(file), Vec::new()).map_err(Failure::usage)?;
    for r in &cfg.renamed_keys {
        eprintln!("warning: {r}");
    }
    println!(
        "{}: ok (listen {}, interval {}s)",
        file.display(),
        cfg.listen,
        cfg.interval_secs
    );
    Ok(())
}
