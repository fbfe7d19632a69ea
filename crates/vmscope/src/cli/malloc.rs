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
//! A fixed `mmap` threshold (`glibc.malloc.mmap_threshold=262144`) kept
//! more of that out of the heap (130.3 MiB at 10 000 VMs, one run) but cost
//! 1 ms per tick at 1000 (5%, two runs): the buffers a tick allocates are
//! then fresh mappings, faulted in page by page every tick. Not set.
//!
//! The operator's own choice wins: with `MALLOC_ARENA_MAX` in the
//! environment, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES` (both read
//! by glibc when the process starts), nothing is changed here.

use std::ffi::OsStr;

/// At most this many arenas (the main one and one more).
pub const ARENAS: i32 = 2;

/// What [`limit_arenas`] did, for the startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arenas {
    /// At most [`ARENAS`] from now on.
    Limited,
    /// The operator set it through the environment: left as set.
    Operator,
    /// Not glibc, or glibc refused.
    Unchanged,
}

/// True when the environment already says how many arenas glibc may use.
pub fn operator_set(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    env("MALLOC_ARENA_MAX").is_some()
        || env("GLIBC_TUNABLES").is_some_and(|t| tunables_name_arena_max(&t))
}

fn tunables_name_arena_max(t: &OsStr) -> bool {
    // `name=value` pairs separated by `:` (glibc's tunables syntax).
    t.as_encoded_bytes()
        .split(|b| *b == b':')
        .any(|kv| kv.starts_with(b"glibc.malloc.arena_max="))
}

/// Limits glibc to [`ARENAS`] arenas unless the operator chose already.
/// Call before threads start: arenas that exist stay.
pub fn limit_arenas() -> Arenas {
    if operator_set(|k| std::env::var_os(k)) {
        return Arenas::Operator;
    }
    if set_arena_max(ARENAS) {
        Arenas::Limited
    } else {
        Arenas::Unchanged
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(n: i32) -> bool {
    // SAFETY: mallopt takes two integers and no pointers; glibc takes its
    // own lock for it, so it may be called at any time, from any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_: i32) -> bool {
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
        assert!(!operator_set(env(&[])));
        assert!(operator_set(env(&[("MALLOC_ARENA_MAX", "4")])));
        assert!(operator_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=8"
        )])));
        // Other tunables, or a name that only starts the same, are not it.
        assert!(!operator_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_test=2:glibc.malloc.mmap_threshold=262144"
        )])));
        assert!(!operator_set(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_maxx=1"
        )])));
    }
}
