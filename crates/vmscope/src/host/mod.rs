//! What discovery and the collectors stand on: where the host's trees are
//! ([`Roots`]), how files below them are read ([`ProcFile`] with held
//! descriptors under an [`FdBudget`], typed [`CollectError`]s) and what time
//! it is on the host ([`Clock`]).
//!
//! Imports nothing of the agent but this folder: discovery and collectors
//! import `host` (and `model`), never each other, so either can change
//! without the other noticing.

pub mod clock;
pub mod procfile;
pub mod roots;

pub use clock::Clock;
pub use procfile::{CollectError, FdBudget, HostFile, ProcFile, is_gone, read_once};
pub use roots::Roots;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::path::Path;

    /// The `crate::` modules that the files of `dir` (relative to `src/`)
    /// import, as `(file, module)`.
    fn imports(dir: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                let Some(rest) = line.trim_start().strip_prefix("use crate::") else {
                    continue;
                };
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((path.display().to_string(), module));
            }
        }
        out
    }

    #[test]
    fn host_discovery_and_collectors_stand_on_host_and_model_only() {
        for (file, module) in imports("host") {
            assert!(module == "host", "{file} imports crate::{module}");
        }
        for (dir, may_not) in [("discovery", "collectors"), ("collectors", "discovery")] {
            for (file, module) in imports(dir) {
                assert_ne!(module, may_not, "{file} imports crate::{module}");
                assert!(
                    ["host", "model", "config", dir].contains(&module.as_str()),
                    "{file} imports crate::{module}"
                );
            }
        }
    }
}
