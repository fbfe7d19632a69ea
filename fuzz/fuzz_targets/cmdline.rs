//! /proc/<pid>/cmdline: split, classify, and parse as each hypervisor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmscope_proc::classify_comm(data);
    let args = vmscope_proc::split_cmdline(data);
    let _ = vmscope_proc::parse_vm_cmdline(&args);
    // Force each parser, whatever argv[0] the input has.
    for argv0 in ["qemu-system-x86_64", "cloud-hypervisor", "firecracker"] {
        let mut a = Vec::with_capacity(args.len() + 1);
        a.push(argv0.to_string());
        a.extend(args.iter().skip(1).cloned());
        assert!(vmscope_proc::parse_vm_cmdline(&a).is_some());
    }
});
