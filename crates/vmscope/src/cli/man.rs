//! `vmscope man DIR` (hidden): the manual pages, generated from the same
//! clap definitions as `--help` (clap_mangen), so they cannot drift from
//! the binary: `vmscope.1` and one page per command (`vmscope-serve.1`,
//! ...). The Debian package build (`packaging/build-deb.sh`) runs it.
//!
//! Writes: `DIR/vmscope*.1`. Fails: when DIR is missing or not writable
//! (runtime error naming it).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, Failure};

pub fn run(dir: &Path) -> Result<(), Failure> {
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))
        .map_err(Failure::runtime)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn writes_a_page_per_visible_command_with_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(run(dir.path()).is_ok());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"vmscope.1".to_owned()), "{names:?}");
        assert!(names.contains(&"vmscope-serve.1".to_owned()), "{names:?}");
        // Hidden: not a page of its own.
        assert!(
            !names.iter().any(|n| n.starts_with("vmscope-man")),
            "{names:?}"
        );
        let serve = std::fs::read_to_string(dir.path().join("vmscope-serve.1")).unwrap();
        assert!(serve.contains("log.max\\-size"), "{serve}");
        assert!(serve.starts_with(".ie") || serve.contains(".TH"), "{serve}");
    }

    #[test]
    fn a_missing_directory_is_a_runtime_error_naming_it() {
        let f = run(Path::new("/nonexistent/man1")).err().unwrap();
        assert_eq!(f.code, 1);
        let msg = format!("{:#}", f.error.unwrap());
        assert!(msg.contains("/nonexistent/man1"), "{msg}");
    }
}
