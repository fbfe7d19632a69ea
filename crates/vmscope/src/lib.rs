//! vmscope: an observability agent for virtual-machine hosts.
//!
//! Modules in data-flow order (see `docs/architecture.md`, which also has
//! the import rules that `layering.rs` holds):
//!
//! ```text
//! error, model, host     what everything stands on (no agent imports)
//! discovery, collectors  which VMs exist; one file per thing measured
//! hypervisor             each hypervisor's own API, polled off the tick
//! owners                 who owns each VM (sources, one resolve step)
//! pipeline               the tick: one immutable Arc<Snapshot> per interval
//! export, outbound       metric sources and encoders; delivery out
//! store, alert           state database; the watchdog and its sinks
//! ledger                 usage per VM incarnation and interval, persisted
//! push                   remote_write and OTLP pushers fed by the snapshots
//! access                 web config (TLS, users, tokens), access decisions
//! proxy                  PromQL tenant scoping, the upstream Prometheus client
//! config                 every section, loaded and checked
//! api, server            the HTTP edge
//! cli                    the commands; `serve` is the composition root
//! ```

// What everything stands on.
pub mod error;
pub mod host;
pub mod model;

// Which VMs exist, what they use, who owns them.
pub mod discovery;

pub mod collectors;

pub mod hypervisor;

pub mod owners;

// The tick.
pub mod pipeline;

// Consumers of the snapshot.
pub mod export;

pub mod outbound;

pub mod store;

pub mod alert;

pub mod ledger;

pub mod push;

// Who may read what over HTTP (no web framework types).
pub mod access;

// The tenant query proxy in front of Prometheus (no web framework types).
pub mod proxy;

// Configuration of all of the above.
pub mod config;

// The HTTP edge.
pub mod api;
pub mod server;

// The commands.
pub mod cli;

/// Version and build facts, exported as `vmscope_build_info`.
pub struct BuildInfo;

impl BuildInfo {
    pub const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    pub const RUST_VERSION: &'static str = "1.95";
}

/// The dependency rules between the modules above, as a test.
#[cfg(test)]
mod layering;
