//! Pure parsers for what vmscope reads about a VM host: `/proc` files,
//! hypervisor command lines, Firecracker config files and libvirt status XML.
//!
//! No function here does IO. Each takes the bytes the caller read (cmdline and
//! `comm` need not be UTF-8), never panics, and returns either a value, a
//! [`ParseError`] naming the file kind and field, or (for line tables such as
//! `/proc/net/dev` and mountinfo) the lines that parsed, skipping the rest.
//! Times are returned in clock ticks or nanoseconds and memory in pages or
//! bytes exactly as the kernel gives them; the caller converts ticks and pages
//! with `sysconf`, never with hard-coded values.

pub mod blockstat;
pub mod chcounters;
pub mod cmdline;
pub mod error;
pub mod fcmetrics;
pub mod firecracker;
pub mod io;
pub mod libvirt;
pub mod libvirt_rpc;
pub mod loadavg;
pub mod meminfo;
pub mod metadata;
pub mod mountinfo;
pub mod netdev;
pub mod proc_events;
pub mod procstat;
pub mod qmp;
pub mod schedstat;
pub mod stat;
pub mod statm;

pub use blockstat::*;
pub use chcounters::*;
pub use cmdline::*;
pub use error::{FileKind, ParseError};
pub use fcmetrics::*;
pub use firecracker::*;
pub use io::*;
pub use libvirt::*;
pub use loadavg::*;
pub use meminfo::*;
pub use metadata::Metadata;
pub use mountinfo::*;
pub use netdev::*;
pub use proc_events::*;
pub use procstat::*;
pub use qmp::*;
pub use schedstat::*;
pub use stat::*;
pub use statm::*;
