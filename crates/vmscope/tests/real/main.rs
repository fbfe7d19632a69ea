//! The real-component tests: one binary (linked once) for everything that
//! starts real processes beside vmscope: QEMU VMs, libvirtd, Prometheus,
//! VictoriaMetrics, Alertmanager, HTTP receivers, a FUSE mount, unprivileged agents, tmpfs
//! "full disks". Needs root; see `docs/lab.md`. Tests whose CPU figures
//! need the machine to themselves (`e2e::`, `watchdog_e2e::`) run alone
//! (`.config/nextest.toml`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod access;
mod access_tls;
mod alert_store_pg;
mod cli_robustness;
mod discovery_events;
mod e2e;
mod http_hardening;
mod hung_mount;
mod ledger;
mod ledger_counters;
mod ledger_pg;
mod malloc;
mod mixin;
mod owners;
mod owners_http;
mod owners_libvirt;
mod owners_redis;
mod owners_sql;
mod owners_usage;
mod package;
mod proxy;
mod push;
mod scrape_rate;
mod state_db;
mod status_page;
mod tenant_escape;
mod top;
mod vm_disk;
mod vm_disk_firecracker;
mod vm_disk_libvirt;
mod vm_memory;
mod watchdog_e2e;
mod watchdog_secrets;
mod watchdog_sinks;
mod watchdog_usage;
