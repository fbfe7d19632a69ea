//! What discovery and the collectors stand on: where the host's trees are
//! ([`Roots`]), how files below them are read ([`ProcFile`] with held
//! descriptors under an [`FdBudget`], typed [`CollectError`]s) and what time
//! it is on the host ([`Clock`]).
//!
//! Imports nothing of the agent but this folder: discovery and collectors
//! import `host` (and `model`), never each other, so either can change
//! without the other noticing (`crate::layering` holds both rules).

pub mod clock;
pub mod procfile;
pub mod roots;

pub use clock::Clock;
pub use procfile::{CollectError, FdBudget, HostFile, ProcFile, is_gone, read_once};
pub use roots::Roots;
