//! The pure integration tests: one binary (linked once) for everything that
//! needs no real component beyond the vmscope binary itself: the API through
//! `oneshot`, the exposition formats, the fixture-tree goldens and the CLI
//! on configuration files. Fast, parallel, no root needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod api;
mod cli;
mod exposition;
mod fixtures;
mod metrics_doc;
mod mixin;
mod owners;
mod top;
