//! The last hour of each VM and of the host, kept in memory for the status
//! page's sparklines and graphs (`/api/v1/history`,
//! `/api/v1/vms/{id}/history`).
//!
//! Reads: each published [`Snapshot`] ([`History::record`], called by a
//! subscriber of the snapshot channel, off the collector's tick). Emits:
//! copies of the series ([`History::vm`], [`History::host`], [`History::vms`]),
//! coarsened on request ([`downsample`]). Pure apart from one mutex; never
//! fails: a VM without rates yet (its first tick) or a host without a CPU
//! ratio adds no point.
//!
//! Design, for 1000 VMs to stay small:
//! - **One point per [`STEP_SECS`]** (15 s) per series, the mean of the
//!   ticks that fell in it (a 1 s tick updates the current point in place),
//!   so the buffer's length does not depend on the collection interval.
//! - **A ring per VM** of at most [`POINTS`] (240: one hour) steps. The
//!   current step is the exact running mean of its ticks; a finished step
//!   is 9 bytes: four bfloat16 means (CPU cores, RSS, and network receive
//!   and transmit rates; 8 significant bits, within 0.4%, plenty for a
//!   graph) and a `u8` tick count, 0 for a step without a tick. A step's
//!   time is implied by its place in the ring (the ring keeps the oldest
//!   step's), so the 24-byte [`Point`] with its own time is built only
//!   when the series is read. Allocated once at its full size: about 2.3
//!   KiB per VM, 2.3 MB for 1000 VMs, 9.3 MB at the [`MAX_VMS`] cap
//!   (measured by `memory_per_vm_at_1000_vms`, which prints the figure;
//!   docs/status-page.md; it was 4.4 KiB with `f32` steps, 5.9 KiB with a
//!   time per point).
//! - **Bounded**: a VM absent from the latest snapshot is dropped with its
//!   ring; at most [`MAX_VMS`] VMs are followed (others are counted in
//!   [`History::untracked`] and get no history). Points older than
//!   [`WINDOW_SECS`] are dropped even when ticks are slower than a step.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Snapshot;

/// Seconds per point.
pub const STEP_SECS: u32 = 15;
/// How far back the series reach.
pub const WINDOW_SECS: u32 = 3600;
/// Points per series: one hour of steps.
pub const POINTS: usize = (WINDOW_SECS / STEP_SECS) as usize;
/// VMs followed at most (each ~2.3 KiB).
pub const MAX_VMS: usize = 4096;

/// One step of one series: the mean of the `N` values of the ticks in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<const N: usize> {
    /// Start of the step, Unix seconds (a multiple of [`STEP_SECS`]).
    pub t: u32,
    /// Ticks averaged into it.
    pub ticks: u32,
    pub v: [f32; N],
}

/// A VM's point: CPU cores in use, RSS bytes, network rx and tx bytes/s.
pub type VmPoint = Point<4>;
/// The host's point: CPU cores in use, memory used bytes.
pub type HostPoint = Point<2>;

/// `x` as bfloat16 (the upper half of its `f32` bits, rounded to nearest,
/// ties to even): f32's range with 8 significant bits, a relative error of
/// at most 2^-8 (0.4%), invisible in a graph. NaN stays NaN.
fn to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let bits = x.to_bits();
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to
    // even; a carry into the exponent is the right result (up to inf).
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// One series: one entry per step from `first` on, at most [`POINTS`],
/// oldest first; a step without a tick (slow ticks, a stalled agent) is an
/// entry with 0 ticks, never the first one.
///
/// The current (newest) step is kept exact, as the running mean its ticks
/// update in place; the finished steps before it are stored compactly
/// (9 bytes a step for a VM: four bfloat16 means and a `u8` tick count),
/// so a VM's full hour takes 2.1 KiB instead of the 4.2 KiB of `f32`s.
#[derive(Debug, Clone)]
struct Ring<const N: usize> {
    /// Each finished step's mean values, bfloat16 ([`to_bf16`]).
    values: VecDeque<[u16; N]>,
    /// Ticks averaged into each finished step (0: none; saturates at 255,
    /// which only weighs a step in [`downsample`]).
    ticks: VecDeque<u8>,
    /// The current step's running mean.
    cur: [f32; N],
    /// Ticks in the current step; 0 only when the ring is empty (then
    /// `values` is empty too).
    cur_ticks: u16,
    /// Start of the oldest step, Unix seconds (meaningless when empty).
    first: u32,
}

impl<const N: usize> Ring<N> {
    fn new() -> Self {
        // The finished steps: one hour but the current step.
        Ring {
            values: VecDeque::with_capacity(POINTS - 1),
            ticks: VecDeque::with_capacity(POINTS - 1),
            cur: [0.0; N],
            cur_ticks: 0,
            first: 0,
        }
    }

    /// Steps held, the current one included.
    fn len(&self) -> usize {
        self.ticks.len() + usize::from(self.cur_ticks > 0)
    }

    fn pop_front(&mut self) {
        if self.ticks.pop_front().is_some() {
            self.values.pop_front();
        } else {
            self.cur_ticks = 0;
        }
        self.first = self.first.saturating_add(STEP_SECS);
    }

    /// Adds one tick's values at Unix second `now`.
    fn add(&mut self, now: u32, v: [f32; N]) {
        let t = now - now % STEP_SECS;
        // Old steps go first (also when ticks are rarer than steps), then
        // gaps left at the front. After this the steps from `first` to `t`
        // fit in POINTS: the deques never grow past their capacity.
        while self.len() > 0 && self.first.saturating_add(WINDOW_SECS) <= t {
            self.pop_front();
        }
        while self.ticks.front() == Some(&0) {
            self.pop_front();
        }
        let Some(len) = u32::try_from(self.len()).ok().filter(|n| *n > 0) else {
            self.first = t;
            self.cur = v;
            self.cur_ticks = 1;
            return;
        };
        let last = self.first.saturating_add((len - 1) * STEP_SECS);
        if t == last {
            self.cur_ticks = self.cur_ticks.saturating_add(1);
            let k = f32::from(self.cur_ticks);
            for (m, x) in self.cur.iter_mut().zip(v) {
                *m += (x - *m) / k;
            }
            return;
        }
        // A clock stepped back: keep the series ordered, drop the tick.
        if t < last {
            return;
        }
        // The current step is finished: stored compactly from here on.
        self.values.push_back(self.cur.map(to_bf16));
        self.ticks
            .push_back(u8::try_from(self.cur_ticks).unwrap_or(u8::MAX));
        // Steps without a tick in between (fewer than POINTS: the oldest
        // step is within the window of `t`).
        for _ in 1..(t - last) / STEP_SECS {
            self.values.push_back([0; N]);
            self.ticks.push_back(0);
        }
        self.cur = v;
        self.cur_ticks = 1;
        while self.len() > POINTS {
            self.pop_front();
        }
    }

    fn to_vec(&self) -> Vec<Point<N>> {
        let mut t = self.first;
        let mut out = Vec::with_capacity(self.len());
        for (v, n) in self.values.iter().zip(&self.ticks) {
            if *n > 0 {
                out.push(Point {
                    t,
                    ticks: u32::from(*n),
                    v: v.map(from_bf16),
                });
            }
            t = t.saturating_add(STEP_SECS);
        }
        if self.cur_ticks > 0 {
            out.push(Point {
                t,
                ticks: u32::from(self.cur_ticks),
                v: self.cur,
            });
        }
        out
    }

    fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<[u16; N]>()
            + self.ticks.capacity() * std::mem::size_of::<u8>()
    }
}

#[derive(Debug)]
struct Inner {
    /// Each VM's ring and the number of the last recording whose snapshot
    /// had the VM. foldhash: looked up for every VM of every snapshot.
    vms: HashMap<Arc<str>, (Ring<4>, u64), foldhash::fast::RandomState>,
    host: Ring<2>,
    untracked: usize,
    /// Recordings so far.
    recorded: u64,
}

/// The in-memory history: shared by the subscriber that records and the
/// handlers that read (each holds the lock for one copy).
#[derive(Debug)]
pub struct History {
    inner: Mutex<Inner>,
}

impl Default for History {
    fn default() -> Self {
        History {
            inner: Mutex::new(Inner {
                vms: HashMap::default(),
                host: Ring::new(),
                untracked: 0,
                recorded: 0,
            }),
        }
    }
}

fn unix_secs(t: SystemTime) -> u32 {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(s).unwrap_or(u32::MAX)
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `snap`'s values and forgets the VMs it no longer has. O(VMs).
    pub fn record(&self, snap: &Snapshot) {
        let now = unix_secs(snap.collected_at);
        let mut g = self.lock();
        let inner = &mut *g;
        inner.recorded += 1;
        let this = inner.recorded;
        // Each VM of the snapshot marks its ring (one lookup per VM); the
        // rings left unmarked are the VMs that left. (A binary search of
        // the snapshot per ring cost more than the rest: 3 ms a tick at
        // 10 000 VMs.)
        let mut new = Vec::new();
        let mut untracked = 0;
        for vm in &snap.vms {
            let ring = inner.vms.get_mut(vm.id.as_str()).map(|(ring, seen)| {
                *seen = this;
                ring
            });
            let Some(r) = vm.rates else { continue };
            let v = [
                r.cpu_cores as f32,
                vm.memory_rss_bytes as f32,
                r.network_rx_bytes_per_second as f32,
                r.network_tx_bytes_per_second as f32,
            ];
            match ring {
                Some(ring) => ring.add(now, v),
                // No more than could ever be added: the rest are untracked.
                None if new.len() < MAX_VMS => new.push((vm.id.as_str(), v)),
                None => untracked += 1,
            }
        }
        inner.vms.retain(|_, (_, seen)| *seen == this);
        // New VMs after the ones that left made room.
        for (id, v) in new {
            if inner.vms.len() < MAX_VMS {
                let mut ring = Ring::new();
                ring.add(now, v);
                inner.vms.insert(Arc::from(id), (ring, this));
            } else {
                untracked += 1;
            }
        }
        inner.untracked = untracked;
        let h = &snap.host;
        if let Some(ratio) = h.cpu_ratio {
            let used = h
                .memory_total_bytes
                .saturating_sub(h.memory_available_bytes);
            inner
                .host
                .add(now, [(ratio * f64::from(h.cpus)) as f32, used as f32]);
        }
    }

    /// One VM's points, oldest first (`None`: not followed).
    pub fn vm(&self, id: &str) -> Option<Vec<VmPoint>> {
        self.lock().vms.get(id).map(|(r, _)| r.to_vec())
    }

    /// The points of each of `ids` that is followed, in `ids`' order.
    pub fn vms<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<VmPoint>)> {
        let g = self.lock();
        ids.filter_map(|id| g.vms.get(id).map(|(r, _)| (id, r.to_vec())))
            .collect()
    }

    /// The host's points, oldest first.
    pub fn host(&self) -> Vec<HostPoint> {
        self.lock().host.to_vec()
    }

    /// VMs of the latest snapshot left without history ([`MAX_VMS`]).
    pub fn untracked(&self) -> usize {
        self.lock().untracked
    }

    /// VMs followed.
    pub fn len(&self) -> usize {
        self.lock().vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held: rings, ids and the map's slots (an estimate of
    /// the allocations, from their capacities).
    pub fn heap_bytes(&self) -> usize {
        let g = self.lock();
        let slot = std::mem::size_of::<(Arc<str>, (Ring<4>, u64))>() + 1;
        let vms: usize = g
            .vms
            .iter()
            // An Arc<str>'s allocation: two counts and the bytes.
            .map(|(id, (r, _))| r.heap_bytes() + id.len() + 2 * std::mem::size_of::<usize>())
            .sum();
        vms + g.vms.capacity() * slot + g.host.heap_bytes()
    }
}

/// At most `max` points (`max` ≥ 1): runs of consecutive points merged into
/// one, each the tick-weighted mean of its run at the run's first time.
pub fn downsample<const N: usize>(points: &[Point<N>], max: usize) -> Vec<Point<N>> {
    let max = max.max(1);
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .filter_map(|run| {
            let first = run.first()?;
            let ticks: u32 = run.iter().map(|p| p.ticks).sum();
            let total = ticks.max(1) as f32;
            let mut v = [0f32; N];
            for p in run {
                for (acc, x) in v.iter_mut().zip(p.v) {
                    *acc += x * p.ticks as f32 / total;
                }
            }
            Some(Point {
                t: first.t,
                ticks,
                v,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{VmRates, VmStats};

    fn rates(cpu: f64, rx: f64) -> VmRates {
        VmRates {
            window_seconds: 1.0,
            cpu_cores: cpu,
            cpu_utilization_ratio: None,
            network_rx_bytes_per_second: rx,
            network_tx_bytes_per_second: 0.0,
            disk_read_bytes_per_second: 0.0,
            disk_write_bytes_per_second: 0.0,
        }
    }

    fn snap(at: u64, vms: &[(&str, Option<f64>)]) -> Snapshot {
        let mut s = Snapshot::empty(Duration::from_secs(1));
        s.seq = at;
        s.collected_at = UNIX_EPOCH + Duration::from_secs(at);
        s.host.cpus = 4;
        s.host.cpu_ratio = Some(0.5);
        s.host.memory_total_bytes = 1000;
        s.host.memory_available_bytes = 400;
        s.vms = vms
            .iter()
            .map(|(id, cpu)| {
                let mut v = VmStats::unmeasured(1, crate::model::Source::Process);
                v.id = (*id).to_owned();
                v.rates = cpu.map(|c| rates(c, 10.0));
                v.memory_rss_bytes = 2048;
                v
            })
            .collect();
        s.vms.sort_by(|a, b| a.id.cmp(&b.id));
        s
    }

    #[test]
    fn ticks_within_a_step_are_averaged_into_one_point() {
        let h = History::new();
        // 1_800_000_000 is a multiple of 15.
        for (i, cpu) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            h.record(&snap(1_800_000_000 + i as u64, &[("a", Some(cpu))]));
        }
        h.record(&snap(1_800_000_015, &[("a", Some(10.0))]));
        let pts = h.vm("a").unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].t, 1_800_000_000);
        assert_eq!(pts[0].ticks, 3);
        assert_eq!(pts[0].v, [2.0, 2048.0, 10.0, 0.0]);
        assert_eq!(pts[1].v[0], 10.0);
        let host = h.host();
        assert_eq!(host.len(), 2);
        assert_eq!(host[0].v, [2.0, 600.0]);
    }

    #[test]
    fn a_vm_without_rates_gets_no_point_and_a_vm_that_left_is_dropped() {
        let h = History::new();
        h.record(&snap(1_800_000_000, &[("a", None), ("b", Some(1.0))]));
        assert!(h.vm("a").is_none());
        assert_eq!(h.len(), 1);
        h.record(&snap(1_800_000_001, &[("a", Some(1.0))]));
        assert!(h.vm("b").is_none(), "b left");
        assert_eq!(h.vm("a").unwrap().len(), 1);
    }

    #[test]
    fn the_window_is_one_hour_whatever_the_tick() {
        let h = History::new();
        // A tick per 5 s for two hours.
        for s in (0..7200).step_by(5) {
            h.record(&snap(1_800_000_000 + s, &[("a", Some(1.0))]));
        }
        let pts = h.vm("a").unwrap();
        assert_eq!(pts.len(), POINTS);
        let last = pts[POINTS - 1].t;
        assert_eq!(last - pts[0].t, WINDOW_SECS - STEP_SECS);
        // Slow ticks (every 10 minutes): points older than an hour go.
        let h = History::new();
        for s in (0..7200).step_by(600) {
            h.record(&snap(1_800_000_000 + s, &[("a", Some(1.0))]));
        }
        let pts = h.vm("a").unwrap();
        assert_eq!(pts.len(), 6, "{pts:?}");
        assert!(pts.iter().all(|p| p.t > 1_800_000_000 + 7200 - 3600 - 600));
    }

    /// Steps without a tick take no point, and the points after them keep
    /// their own times (the ring stores none: they are implied).
    #[test]
    fn steps_without_a_tick_are_skipped_and_times_stay_right() {
        let h = History::new();
        let t0 = 1_800_000_000;
        for (at, cpu) in [(0, 1.0), (1, 3.0), (47, 5.0), (200, 7.0), (201, 9.0)] {
            h.record(&snap(t0 + at, &[("a", Some(cpu))]));
        }
        let pts = h.vm("a").unwrap();
        let got: Vec<(u32, u32, f32)> = pts.iter().map(|p| (p.t, p.ticks, p.v[0])).collect();
        let t0 = t0 as u32;
        assert_eq!(
            got,
            vec![(t0, 2, 2.0), (t0 + 45, 1, 5.0), (t0 + 195, 2, 8.0)]
        );
        // An hour later the old steps (gaps included) are gone.
        h.record(&snap(u64::from(t0) + 3600 + 46, &[("a", Some(1.0))]));
        let pts = h.vm("a").unwrap();
        assert_eq!(
            pts.iter().map(|p| p.t).collect::<Vec<_>>(),
            vec![t0 + 195, t0 + 3645]
        );
    }

    #[test]
    fn at_most_max_vms_are_followed() {
        let h = History::new();
        let ids: Vec<String> = (0..MAX_VMS + 3).map(|i| format!("vm-{i:06}")).collect();
        let vms: Vec<(&str, Option<f64>)> = ids.iter().map(|i| (i.as_str(), Some(1.0))).collect();
        h.record(&snap(1_800_000_000, &vms));
        assert_eq!(h.len(), MAX_VMS);
        assert_eq!(h.untracked(), 3);
        // Three followed VMs leave: the three left out take their places
        // in the same recording.
        h.record(&snap(1_800_000_001, &vms[3..]));
        assert_eq!((h.len(), h.untracked()), (MAX_VMS, 0));
        assert!(h.vm(&ids[0]).is_none());
        assert_eq!(h.vm(&ids[MAX_VMS + 2]).map(|p| p.len()), Some(1));
    }

    /// A followed VM without rates in one snapshot (a failed read) is
    /// still there: its ring stays.
    #[test]
    fn a_followed_vm_without_rates_for_a_tick_keeps_its_history() {
        let h = History::new();
        h.record(&snap(1_800_000_000, &[("a", Some(1.0))]));
        h.record(&snap(1_800_000_015, &[("a", None)]));
        h.record(&snap(1_800_000_030, &[("a", Some(2.0))]));
        // The first point is still there (the step without a value has
        // no point).
        let t: Vec<u32> = h.vm("a").unwrap().iter().map(|p| p.t).collect();
        assert_eq!(
            t,
            [
                1_800_000_000 - 1_800_000_000 % STEP_SECS,
                1_800_000_030 - 1_800_000_030 % STEP_SECS
            ]
        );
    }

    #[test]
    fn bfloat16_rounds_to_nearest_and_keeps_f32s_range() {
        for x in [0.0f32, 1.0, 2.5, 600.0, -3.0, 1e-30, 3e38] {
            let back = from_bf16(to_bf16(x));
            assert!((back - x).abs() <= x.abs() / 256.0, "{x} -> {back}");
        }
        // 257 is halfway between 256 and 258: ties go to the even 256;
        // 259 is halfway between 258 and 260: to the even 260.
        assert_eq!(from_bf16(to_bf16(257.0)), 256.0);
        assert_eq!(from_bf16(to_bf16(259.0)), 260.0);
        assert_eq!(from_bf16(to_bf16(257.5)), 258.0);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Finished steps are kept to 8 significant bits (within 0.4%); the current step,
    /// still moving, is exact.
    #[test]
    fn finished_steps_keep_eight_significant_bits_and_the_current_step_is_exact() {
        let h = History::new();
        let rss = 536_870_913u64 + 3_000_000; // 512 MiB and a bit: not a bfloat16
        let mut s = snap(1_800_000_000, &[("a", Some(0.123))]);
        s.vms[0].memory_rss_bytes = rss;
        h.record(&s);
        let now = h.vm("a").unwrap();
        assert_eq!(now[0].v[0], 0.123f32);
        assert_eq!(now[0].v[1], rss as f32);
        s.collected_at += Duration::from_secs(15);
        h.record(&s);
        let pts = h.vm("a").unwrap();
        assert_eq!(pts.len(), 2);
        let (old, cur) = (pts[0].v, pts[1].v);
        assert_ne!(old[1], rss as f32, "the finished step is rounded");
        assert!((old[1] / rss as f32 - 1.0).abs() <= 1.0 / 256.0, "{old:?}");
        assert!((old[0] / 0.123 - 1.0).abs() <= 1.0 / 256.0, "{old:?}");
        assert_eq!(cur[1], rss as f32);
    }

    /// More ticks in a step than a `u8` counts (a 10 ms interval): the
    /// mean stays right, the count saturates.
    #[test]
    fn a_step_of_many_ticks_saturates_its_count_not_its_mean() {
        let mut r = Ring::<1>::new();
        for i in 0..600u32 {
            // 300 ticks of 1.0 and 300 of 3.0 in one step.
            r.add(1_800_000_000, [if i % 2 == 0 { 1.0 } else { 3.0 }]);
        }
        r.add(1_800_000_015, [5.0]);
        let pts = r.to_vec();
        assert_eq!(pts[0].ticks, 255);
        assert!((pts[0].v[0] - 2.0).abs() < 0.01, "{pts:?}");
        assert_eq!(pts[1].v[0], 5.0);
    }

    #[test]
    fn downsample_merges_runs_by_tick_weight() {
        let p = |t, ticks, x| Point::<1> { t, ticks, v: [x] };
        let pts = [
            p(0, 1, 1.0),
            p(15, 3, 5.0),
            p(30, 2, 2.5),
            p(45, 2, 4.0),
            p(60, 1, 7.0),
        ];
        let got = downsample(&pts, 2);
        // (1 + 3 * 5 + 2 * 2.5) / 6 and (2 * 4 + 7) / 3.
        assert_eq!(got, vec![p(0, 6, 3.5), p(45, 3, 5.0)]);
        assert_eq!(downsample(&pts, 10), pts.to_vec());
        assert_eq!(downsample(&pts, 0).len(), 1);
        assert!(downsample::<1>(&[], 5).is_empty());
    }

    /// The figure in docs/status-page.md: bytes per VM with 1000 VMs and a
    /// full hour of 1 s ticks.
    #[test]
    fn memory_per_vm_at_1000_vms() {
        let h = History::new();
        let ids: Vec<String> = (0..1000)
            .map(|i| format!("6f1c2a4e-0000-4000-8000-{i:012}"))
            .collect();
        let vms: Vec<(&str, Option<f64>)> = ids.iter().map(|i| (i.as_str(), Some(1.5))).collect();
        let mut s = snap(1_800_000_000, &vms);
        for t in (0..3600).step_by(STEP_SECS as usize) {
            s.collected_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000 + t);
            h.record(&s);
        }
        assert!(
            h.vms(ids.iter().map(String::as_str))
                .iter()
                .all(|(_, p)| p.len() == POINTS)
        );
        let per_vm = h.heap_bytes() / 1000;
        println!(
            "history: {} bytes per VM at 1000 VMs ({} KiB in all)",
            per_vm,
            h.heap_bytes() / 1024
        );
        // Below the `f32` layout (18 bytes a step), above the rings' own
        // 9 bytes per finished step.
        assert!(per_vm < POINTS * 18, "{per_vm} bytes per VM");
        assert!(per_vm > (POINTS - 1) * 9, "{per_vm}");
    }
}
