//! Time as the host's process table counts it.
//!
//! A process's start time in `/proc/PID/stat` is in clock ticks since boot;
//! [`Clock`] turns it into Unix seconds with the boot time (`btime` of
//! `/proc/stat`) and the kernel's tick rate, both read once at start by the
//! pipeline. Pure: no IO, no failure (a tick rate of 0 is taken as 1).

/// What discovery and the collectors need to know about time on this host.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub ticks_per_second: u64,
    /// Host boot time, Unix seconds (`btime` in /proc/stat).
    pub boot_time: u64,
    /// Now, Unix seconds.
    pub now: f64,
}

impl Clock {
    /// A process start time (ticks since boot) in Unix seconds.
    pub fn start_time(&self, starttime_ticks: u64) -> f64 {
        self.boot_time as f64 + starttime_ticks as f64 / self.ticks_per_second.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_boot_time_plus_ticks() {
        let c = Clock {
            ticks_per_second: 100,
            boot_time: 1_700_000_000,
            now: 0.0,
        };
        assert_eq!(c.start_time(0), 1_700_000_000.0);
        assert_eq!(c.start_time(250), 1_700_000_002.5);
        let broken = Clock {
            ticks_per_second: 0,
            ..c
        };
        assert_eq!(broken.start_time(3), 1_700_000_003.0);
    }
}
