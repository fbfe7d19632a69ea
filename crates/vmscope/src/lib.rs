//! vmscope: an observability agent for virtual-machine hosts.
//!
//! Data flow (see `docs/architecture.md`):
//!
//! ```text
//! discovery/  -> which VMs exist (process scan, libvirt status XML)
//! collectors/ -> one file per thing measured (vm_process, vm_vcpu, vm_net, host_*)
//! host/       -> roots, held-descriptor reads, clock: what both stand on
//! pipeline/   -> runs both on an interval, builds one immutable Arc<Snapshot>
//! consumers:     export/ (Prometheus text, OpenMetrics, JSON)   api/ (HTTP)
//! ```

pub mod alert;
pub mod api;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod discovery;
pub mod error;
pub mod export;
pub mod host;
pub mod model;
pub mod outbound;
pub mod owners;
pub mod pipeline;
pub mod server;
pub mod store;

/// Version and build facts, exported as `vmscope_build_info`.
pub struct BuildInfo;

impl BuildInfo {
    pub const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    pub const RUST_VERSION: &'static str = "1.95";
}

/// The dependency rules between the modules above, as a test.
#[cfg(test)]
mod layering;
