//! Outbound delivery: what every sender of data to another service shares,
//! the alert sinks today and the metric pushers (OTLP, remote_write) next.
//!
//! - [`queue`]: a bounded FIFO per receiver that never blocks the producer,
//!   shedding the cheapest (else oldest) item when full, and counting drops.
//! - [`retry`]: which outcomes are retried, exponential backoff with a cap,
//!   `Retry-After` in seconds or as an HTTP date.
//! - [`client`]: the reqwest client (rustls, timeout, optional extra CA
//!   file, no redirects) and one request's classified outcome.
//! - [`redact`]: [`Secret`], and scrubbing secrets from error text.
//!
//! Reads: CA files, `VMSCOPE_*` secret variables. Emits: HTTP requests and
//! secret-free error text. Fails: only when a client is built
//! ([`ClientError`], naming the CA file). Imports nothing of the agent, so
//! sinks, pushers and config may all use it.

pub mod client;
pub mod queue;
pub mod redact;
pub mod retry;

pub use client::{ClientError, ClientOptions};
pub use queue::BoundedQueue;
pub use redact::Secret;
pub use retry::{Backoff, DeliveryError};
