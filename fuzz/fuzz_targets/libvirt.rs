//! libvirt status/domain XML and remote-protocol replies, plus
//! Firecracker's config JSON and metrics lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = vmscope_proc::parse_libvirt_status(data) {
        assert!(!d.name.is_empty());
    }
    let _ = vmscope_proc::parse_firecracker_config(data);
    let _ = vmscope_proc::parse_firecracker_metrics_line(data);
    use vmscope_proc::libvirt_rpc as rpc;
    if let Ok(recs) = rpc::parse_all_domain_stats(data) {
        for r in &recs {
            assert!(rpc::domain_stats(r).disks.len() <= rpc::MAX_DISKS);
        }
    }
    let _ = rpc::parse_header(data);
    let _ = rpc::parse_error(data);
    let _ = rpc::parse_auth_list(data);
});
