//! /proc/net/dev.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for dev in vmscope_proc::parse_net_dev(data) {
        assert!(!dev.name.is_empty());
    }
});
