//! /proc/self/mountinfo.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in vmscope_proc::parse_mountinfo(data) {
        let _ = vmscope_proc::is_pseudo_fs(&m.fstype);
        let _ = vmscope_proc::is_network_fs(&m.fstype);
    }
});
