//! Process-events connector datagrams (netlink).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = vmscope_proc::parse_proc_events(data, &mut out);
    // At most one event per 16-byte netlink header.
    assert!(out.len() <= data.len() / 16);
});
