//! glibc's allocator, set up for a long-running agent.
//!
//! glibc gives each thread that allocates its own arena, up to 8 per core,
//! and an arena keeps what was freed in it for its own later use. The
//! agent's ten threads (collector, HTTP workers, ledger, pollers) each took
//! one: 13-14 arenas, each holding freed memory the others could not reuse.
//! With at most two (`bench/mem.py`, shipped defaults, after 20 ticks with
//! a gzip scrape each): at 1000 VMs 37.6 and 38.2 -> 34.5 and 33.9 MiB
//! (free inside the arenas 8.3 and 9.4 -> 4.8 and 4.4 MiB), CPU per tick unchanged
//! (18.79 against 18.60-18.83 ms, same runs); at 10 000 VMs 165.8 and
//! 168.6 -> 141.5 and 163.7 MiB: there most of what is left free (25-38
//! MiB) is in the main heap itself, whose top glibc can only give back
//! when nothing live sits above the freed space.
//!
//! A fixed `mmap` threshold of 256 KiB as well: glibc's own threshold
//! starts at 128 KiB and rises to the size of each large block freed (up
//! to 32 MiB), after which the agent's large buffers (bodies, the tick's
//! vectors of VMs) come from the heap and leave holes in it that cannot be
//! given back. Fixed, they are mappings of their own, returned when freed.
//! This cost 1 ms per tick at 1000 VMs (5%) while the tick allocated its
//! vectors of VMs afresh each time (faulted in page by page); with those
//! kept from tick to tick (`pipeline::follow`) it costs nothing measurable:
//! 19.52 and 19.45 ms against 19.44 and 20.33 ms per tick, RSS after 20
//! scraped ticks 33.1 and 33.8 against 35.5 and 36.7 MiB (`bench/mem.py
//! --features defaults`, 1000 VMs, the same binary). At 10 000 VMs (15
//! gzip-scraped ticks, one run each): 148.9 MiB with the arenas alone
//! (29.5 MiB free inside the heap), 129.0 MiB with the threshold too (5.7).
//!
//! The operator's own choice wins, setting by setting: with
//! `MALLOC_ARENA_MAX` (`MALLOC_MMAP_THRESHOLD_`) in the environment, or
//! `glibc.malloc.arena_max` (`glibc.malloc.mmap_threshold`) in
//! `GLIBC_TUNABLES` (read by glibc when the process starts), that one is
//! left as set.

use std::ffi::OsStr;

/// At most this many arenas (the main one and one more).
pub const ARENAS: i32 = 2;

/// Blocks of this size and more are mappings of their own.
pub const MMAP_THRESHOLD: i32 = 256 * 1024;

/// What [`tune`] did with one setting, for the startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Set to vmscope's value.
    Set,
    /// The operator set it through the environment: left as set.
    Operator,
    /// Not glibc, or glibc refused.
    Unchanged,
}

/// One of glibc's settings, by its environment variable and its tunable.
struct Knob {
    env: &'static str,
    tunable: &'static str,
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    param: i32,
}

const ARENA_MAX: Knob = Knob {
    env: "MALLOC_ARENA_MAX",
    tunable: "glibc.malloc.arena_max",
    param: -8, // M_ARENA_MAX
};

const MMAP: Knob = Knob {
    env: "MALLOC_MMAP_THRESHOLD_",
    tunable: "glibc.malloc.mmap_threshold",
    param: -3, // M_MMAP_THRESHOLD
};

/// True when the environment already sets `knob`.
fn operator_set(knob: &Knob, env: &impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    env(knob.env).is_some()
        || env("GLIBC_TUNABLES").is_some_and(|t| tunables_name(&t, knob.tunable))
}

fn tunables_name(t: &OsStr, name: &str) -> bool {
    // `name=value` pairs separated by `:` (glibc's tunables syntax).
    t.as_encoded_bytes().split(|b| *b == b':').any(|kv| {
        kv.strip_prefix(name.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'='))
    })
}

fn apply(knob: &Knob, value: i32, env: &impl Fn(&str) -> Option<std::ffi::OsString>) -> Setting {
    if operator_set(knob, env) {
        Setting::Operator
    } else if mallopt(knob.param, value) {
        Setting::Set
    } else {
        Setting::Unchanged
    }
}

/// Limits glibc to [`ARENAS`] arenas and fixes its `mmap` threshold at
/// [`MMAP_THRESHOLD`], each unless the operator chose already. Call before
/// threads start: arenas that exist stay.
pub fn tune() -> (Setting, Setting) {
    let env = |k: &str| std::env::var_os(k);
    (
        apply(&ARENA_MAX, ARENAS, &env),
        apply(&MMAP, MMAP_THRESHOLD, &env),
    )
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn mallopt(param: i32, value: i32) -> bool {
    // SAFETY: mallopt takes two integers and no pointers; glibc takes its
    // own lock for it, so it may be called at any time, from any thread.
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn mallopt(_: i32, _: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_operators_setting_is_left_alone() {
        assert!(!operator_set(&ARENA_MAX, &env(&[])));
        assert!(operator_set(&ARENA_MAX, &env(&[("MALLOC_ARENA_MAX", "4")])));
        assert!(operator_set(
            &ARENA_MAX,
            &env(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8"
            )])
        ));
        // Other tunables, or a name that only starts the same, are not it.
        let others = [(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_test=2:glibc.malloc.mmap_threshold=262144",
        )];
        assert!(!operator_set(&ARENA_MAX, &env(&others)));
        assert!(operator_set(&MMAP, &env(&others)));
        assert!(!operator_set(
            &ARENA_MAX,
            &env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_maxx=1")])
        ));
        assert!(operator_set(
            &MMAP,
            &env(&[("MALLOC_MMAP_THRESHOLD_", "1")])
        ));
        assert!(!operator_set(&MMAP, &env(&[("MALLOC_ARENA_MAX", "1")])));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_parameters_are_glibcs() {
        assert_eq!(ARENA_MAX.param, libc::M_ARENA_MAX);
        assert_eq!(MMAP.param, libc::M_MMAP_THRESHOLD);
    }
}
