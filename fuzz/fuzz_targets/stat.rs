//! /proc/<pid>/stat, plus the small single-line /proc parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = vmscope_proc::parse_stat(data) {
        // comm must be a "(...)" span of the input, not invented bytes.
        let n = s.comm.len() + 2;
        assert!(
            data.windows(n)
                .any(|w| w[0] == b'(' && w[n - 1] == b')' && w[1..n - 1] == s.comm[..])
        );
    }
    let _ = vmscope_proc::parse_schedstat(data);
    let _ = vmscope_proc::parse_io(data);
    let _ = vmscope_proc::parse_meminfo(data);
    let _ = vmscope_proc::parse_proc_stat_cpu(data);
    let _ = vmscope_proc::parse_loadavg(data);
});
