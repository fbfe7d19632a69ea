//! libvirt status/domain XML, plus the Firecracker config JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = vmscope_proc::parse_libvirt_status(data) {
        assert!(!d.name.is_empty());
    }
    let _ = vmscope_proc::parse_firecracker_config(data);
});
