//! What a push encoder keeps of its last push's series to recognise them
//! in the next one: per series its family, suffix, shared set and own
//! labels, and where its bytes are in the last body.
//!
//! Why: a steady host (the same VMs, families, vCPUs, devices) pushes the
//! same series every time, and writing their labels is most of an
//! encoder's work (remote_write and OTLP alike, measured in
//! `benches/push.rs`). The encoder still walks the snapshot through the
//! exposition's rules (so it pushes exactly what `/metrics` serves), but
//! while each series is the one at the same place last time it only
//! rewrites that series' value and time in the bytes it kept. The first
//! series that differs ends the reuse for the rest of the push.
//!
//! Reads: the series a [`SeriesSink`](crate::export::SeriesSink) is given.
//! Emits: nothing. Fails: never; an offset past 4 GiB (never in practice)
//! only turns the reuse off.

use super::collect::Walk;
use crate::export::{Desc, SeriesLabels, same_bytes, same_labels, same_str};

/// The keys of the last push's series, in order.
#[derive(Default)]
pub struct SeriesKeys {
    keys: Vec<Key>,
    /// The series' own labels, `name 0xFF value 0xFF` (0xFF is never in
    /// UTF-8), back to back; `Key::own_end` delimits them.
    own: Vec<u8>,
    /// Each shared set's labels as last recorded, by set number (the
    /// structured encoder numbers sets in the order they are declared).
    sets: Vec<Option<Vec<(&'static str, String)>>>,
    /// Per set, this push: 0 not seen yet, 1 the same labels as recorded
    /// (or just recorded), 2 changed.
    set_state: Vec<u8>,
    /// False once an offset did not fit.
    usable: bool,
    /// How the push that recorded these keys walked.
    walk: Walk,
}

#[derive(Clone, Copy)]
struct Key {
    /// Where the series' bytes start, and a position the encoder chose
    /// (where its value is).
    start: u32,
    at: u32,
    desc: &'static Desc,
    suffix: &'static str,
    /// The shared set's number, `u32::MAX` for none.
    set: u32,
    own_end: u32,
}

impl SeriesKeys {
    /// Starts a push: `keep` false forgets everything (the bytes the keys
    /// point into are not reusable).
    pub fn begin(&mut self, keep: bool) {
        self.set_state.clear();
        if !keep || !self.usable {
            self.keys.clear();
            self.own.clear();
            self.sets.clear();
            self.usable = true;
        }
    }

    /// Whether the next push may replay the one these keys are of: it
    /// refused nothing, and there is something to replay.
    pub fn replayable(&self) -> bool {
        self.walk.clean && !self.keys.is_empty()
    }

    /// How the push these keys are of walked.
    pub fn walk(&self) -> Walk {
        self.walk
    }

    pub fn set_walk(&mut self, walk: Walk) {
        self.walk = walk;
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// If series `i` of the last push is this one, the position recorded
    /// for it (`at`).
    pub fn matches(
        &mut self,
        i: usize,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
    ) -> Option<usize> {
        let k = *self.keys.get(i)?;
        if !std::ptr::eq(k.desc, desc) || !same_str(k.suffix, suffix) {
            return None;
        }
        match labels.set() {
            None if k.set == u32::MAX => {}
            None => return None,
            Some((id, set)) => {
                if k.set as usize != id || self.set(id, set) != 1 {
                    return None;
                }
            }
        }
        self.same_own(i, labels.own()).then_some(k.at as usize)
    }

    /// Set `id`'s state this push, comparing it with the recorded labels
    /// at its first series.
    fn set(&mut self, id: usize, set: &[(&'static str, String)]) -> u8 {
        if self.set_state.len() <= id {
            self.set_state.resize(id + 1, 0);
        }
        let Some(state) = self.set_state.get_mut(id) else {
            return 2;
        };
        if *state == 0 {
            let same = self
                .sets
                .get(id)
                .and_then(Option::as_ref)
                .is_some_and(|kept| same_labels(kept, set));
            *state = if same { 1 } else { 2 };
        }
        *state
    }

    fn own_range(&self, i: usize) -> (usize, usize) {
        let from = match i.checked_sub(1) {
            Some(j) => self.keys.get(j).map_or(0, |k| k.own_end as usize),
            None => 0,
        };
        (from, self.keys.get(i).map_or(from, |k| k.own_end as usize))
    }

    /// Whether own labels `own` are those recorded for series `i`.
    fn same_own<'a>(&self, i: usize, own: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
        let (from, to) = self.own_range(i);
        let Some(mut kept) = self.own.get(from..to) else {
            return false;
        };
        for (k, v) in own {
            for part in [k, v] {
                let n = part.len();
                let same = kept
                    .get(..n)
                    .is_some_and(|kept| same_bytes(kept, part.as_bytes()));
                if !same || kept.get(n) != Some(&0xFF) {
                    return false;
                }
                kept = kept.get(n + 1..).unwrap_or_default();
            }
        }
        kept.is_empty()
    }

    /// Records a series written afresh: its bytes from `start`, the
    /// encoder's position `at`.
    pub fn record(
        &mut self,
        start: usize,
        at: usize,
        desc: &'static Desc,
        suffix: &'static str,
        labels: &SeriesLabels<'_>,
    ) {
        let set = match labels.set() {
            Some((id, set)) => {
                if self.set_state.len() <= id {
                    self.set_state.resize(id + 1, 0);
                }
                if self.set_state.get(id) != Some(&1) {
                    if self.sets.len() <= id {
                        self.sets.resize_with(id + 1, || None);
                    }
                    if let Some(slot) = self.sets.get_mut(id) {
                        *slot = Some(set.to_vec());
                    }
                    if let Some(s) = self.set_state.get_mut(id) {
                        *s = 1;
                    }
                }
                u32::try_from(id).ok().filter(|&s| s != u32::MAX)
            }
            None => Some(u32::MAX),
        };
        for (k, v) in labels.own() {
            self.own.extend_from_slice(k.as_bytes());
            self.own.push(0xFF);
            self.own.extend_from_slice(v.as_bytes());
            self.own.push(0xFF);
        }
        let n = |x: usize| u32::try_from(x).ok();
        let (Some(start), Some(at), Some(own_end), Some(set)) =
            (n(start), n(at), n(self.own.len()), set)
        else {
            self.usable = false;
            return;
        };
        self.keys.push(Key {
            start,
            at,
            desc,
            suffix,
            set,
            own_end,
        });
    }

    /// Where series `i`'s bytes start.
    pub fn start(&self, i: usize) -> Option<usize> {
        self.keys.get(i).map(|k| k.start as usize)
    }

    /// Moves the positions of series `from..` by `+add - sub` (an encoder
    /// that writes a family's series apart, then copies them into place).
    pub fn shift(&mut self, from: usize, sub: usize, add: usize) {
        let moved = |x: u32| {
            (x as usize)
                .checked_sub(sub)
                .and_then(|x| x.checked_add(add))
                .and_then(|x| u32::try_from(x).ok())
        };
        for k in self.keys.iter_mut().skip(from) {
            match (moved(k.start), moved(k.at)) {
                (Some(s), Some(a)) => (k.start, k.at) = (s, a),
                _ => self.usable = false,
            }
        }
    }

    /// Forgets series `i..`; where series `i`'s bytes started (`None`
    /// past the last).
    pub fn cut(&mut self, i: usize) -> Option<usize> {
        let start = self.keys.get(i).map(|k| k.start as usize);
        let (from, _) = self.own_range(i);
        if i < self.keys.len() {
            self.own.truncate(from);
            self.keys.truncate(i);
        }
        start
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::{SampleCollector, SeriesSink, Value};
    use std::any::Any;
    use std::sync::Arc;

    /// A histogram and a counter whose values follow the snapshot's
    /// sequence number (so that a reused point must be rewritten).
    pub(crate) struct Moving(pub u64);

    impl crate::export::MetricSource for Moving {
        fn encode(&self, out: &mut crate::export::MetricWriter<'_>) {
            static H: Desc = Desc::histogram("t_moving_seconds", "Moves.");
            static C: Desc = Desc::counter("t_moving_total", "Moves.");
            let n = self.0;
            out.family(&H);
            let buckets = [(0.1, n), (1.0, 2 * n), (10.0, 3 * n)];
            out.histogram(&[("path", "/x")], &buckets, 1.5 * n as f64, 4 * n);
            out.family(&C);
            out.sample(&[("vm_id", "vm-000002")], n as f64);
        }
    }

    /// A source that breaks no rule in mode 0 and, in each other mode,
    /// either breaks one (of those a replay does not run again, or of
    /// those it does) or changes shape.
    pub(crate) struct Breaks(pub u8);

    /// The modes of [`Breaks`] past 0, and whether the push refuses
    /// nothing in each.
    pub(crate) const BREAKS: [(u8, bool); 9] = [
        (1, false), // a counter negative
        (2, false), // a histogram's sum NaN
        (3, false), // a series repeated in a set's run
        (4, true),  // a series fewer in the middle
        (5, true),  // a series more
        (6, false), // a family again
        (7, false), // an extra label that is one of the set's
        (8, false), // a set's run again, later in the family
        (9, false), // a family declared again between its series
    ];

    impl crate::export::MetricSource for Breaks {
        fn encode(&self, out: &mut crate::export::MetricWriter<'_>) {
            static C: Desc = Desc::counter("t_breaks_total", "Breaks.");
            static H: Desc = Desc::histogram("t_breaks_seconds", "Breaks.");
            static G: Desc = Desc::gauge("t_breaks", "Breaks.");
            let m = self.0;
            out.family(&C);
            out.sample(&[("k", "a")], if m == 1 { -1.0 } else { 1.0 });
            if m == 9 {
                // The same series as last time follow, but the family is
                // a repeated one now: they are refused.
                out.family(&C);
            }
            out.sample(&[("k", "b")], 2u64);
            out.family(&H);
            let sum = if m == 2 { f64::NAN } else { 1.5 };
            out.histogram(&[("k", "a")], &[(0.5, 1), (1.0, 2)], sum, 3);
            out.family(&G);
            let x = out.label_set(&[("vm_id", "x")]);
            let y = out.label_set(&[("vm_id", "y")]);
            out.sample_in(x, &[("vcpu", "0")], 1.0);
            if m == 3 {
                out.sample_in(x, &[("vcpu", "0")], 1.0);
            }
            if m != 4 {
                out.sample_in(x, &[("vcpu", "1")], 1.0);
            }
            if m == 5 {
                out.sample_in(x, &[("vcpu", "2")], 1.0);
            }
            if m == 7 {
                out.sample_in(x, &[("vm_id", "z")], 1.0);
            }
            out.sample_in(y, &[("vcpu", "0")], 1.0);
            if m == 8 {
                out.sample_in(x, &[("vcpu", "3")], 1.0);
            }
            if m == 6 {
                out.family(&C);
                out.sample(&[("k", "c")], 1u64);
            }
        }
    }

    /// The sources a push test walks after the snapshot: [`Breaks`] in
    /// `mode`, or (`mode` `u8::MAX`) the encoder tests' source that
    /// breaks every rule, then [`Moving`].
    pub(crate) fn sources(mode: u8, seq: u64) -> Vec<Arc<dyn crate::export::MetricSource>> {
        let first: Arc<dyn crate::export::MetricSource> = if mode == u8::MAX {
            Arc::new(crate::export::encoder::tests::Odd)
        } else {
            Arc::new(Breaks(mode))
        };
        vec![first, Arc::new(Moving(seq))]
    }

    static A: Desc = Desc::gauge("a", "A.");
    static B: Desc = Desc::gauge("b", "B.");

    /// Records every series' labels in order.
    #[derive(Default)]
    struct Keys(SeriesKeys, Vec<Option<usize>>, bool);

    impl SeriesSink for Keys {
        fn family(&mut self, _: &'static Desc) {}
        fn series(&mut self, d: &'static Desc, s: &'static str, l: SeriesLabels<'_>, _: Value) {
            let i = self.1.len();
            if self.2 {
                self.1.push(self.0.matches(i, d, s, &l));
            } else {
                self.0.record(i * 10, i * 10 + 1, d, s, &l);
                self.1.push(None);
            }
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    /// Runs `write` into a collector whose sink records (`compare`
    /// false) or compares with `keys`.
    fn run(
        keys: SeriesKeys,
        compare: bool,
        write: impl Fn(&mut crate::export::MetricWriter<'_>),
    ) -> Keys {
        let mut keys = keys;
        keys.begin(compare);
        let mut c = SampleCollector::with_sink(Box::new(Keys(keys, Vec::new(), compare)));
        let mut w = crate::export::MetricWriter::samples(&mut c);
        write(&mut w);
        w.finish();
        c.into_sink::<Keys>().unwrap()
    }

    fn host(w: &mut crate::export::MetricWriter<'_>, name: &str, vcpus: &[&str]) {
        let set = w.label_set(&[("vm_id", "1"), ("vm_name", name)]);
        w.family(&A);
        for v in vcpus {
            w.sample_in(set, &[("vcpu", v)], 1.0);
        }
        w.family(&B);
        w.sample(&[("device", "sda")], 2.0);
    }

    #[test]
    fn the_same_series_match_with_their_positions_and_any_change_does_not() {
        // Three series, then the two skip counts `finish` adds.
        let first = run(SeriesKeys::default(), false, |w| host(w, "a", &["0", "1"]));
        assert_eq!(first.0.len(), 5);
        let again = run(first.0, true, |w| host(w, "a", &["0", "1"]));
        assert_eq!(again.1[..3], [Some(1), Some(11), Some(21)]);
        // The set's labels changed: its series do not match; the plain
        // one does.
        let renamed = run(again.0, true, |w| host(w, "b", &["0", "1"]));
        assert_eq!(renamed.1[..3], [None, None, Some(21)]);
        // An own label changed.
        let vcpu = run(renamed.0, true, |w| host(w, "a", &["0", "2"]));
        assert_eq!(vcpu.1[..3], [Some(1), None, Some(21)]);
        // Cut at 1: series 1 started at 10; only series 0 is left.
        let mut k = vcpu.0;
        k.shift(2, 20, 100);
        assert_eq!((k.start(1), k.start(2)), (Some(10), Some(100)));
        assert_eq!(k.cut(1), Some(10));
        assert_eq!(k.len(), 1);
        assert_eq!(k.cut(5), None);
        // Not kept: nothing matches.
        let mut k = run(k, false, |_| {}).0;
        k.begin(false);
        assert!(k.is_empty());
    }
}
