//! Runs one fetched owner source off the collector thread: its own
//! interval, its own timeout, the last good map kept on failure.
//!
//! Reads: whatever the source's [`OwnerSource::fetch`] reads (a file, a
//! database, an HTTP endpoint). Emits: the latest good [`OwnerMap`] behind
//! an `RwLock<Arc<..>>` that the tick reads with `try_read` (it never
//! waits: the lock is only ever held for a pointer swap), and the source's
//! [`Health`].
//!
//! A refresh that finds the rows unchanged (the source says so, or the
//! map it built has the [`OwnerMap::version`] of the published one)
//! publishes nothing: the readers keep their `Arc` (the tick re-resolves
//! no VM) and no copy of the map is made or compared row by row; only the
//! health's `last_success` moves.
//!
//! Two threads per source: a worker that owns the source and fetches when
//! asked, and a supervisor that asks every `every` and waits at most
//! `timeout`. A fetch is blocking code that cannot be cancelled: one that
//! overruns its timeout counts as a `timeout` error and is left to finish
//! (its late answer is dropped: it is older than the interval promises),
//! and no new fetch starts while it hangs (each interval it still hangs
//! counts another `timeout`). A failing source keeps its last good map,
//! reports `up = false` and logs once per change of state, not per
//! refresh. A source that panics stops being refreshed (`panic` error)
//! and keeps its last map. Both threads end when the [`Running`] handle is
//! dropped (the worker after its current fetch).

use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::OwnerMap;

/// A source of owner rows that reads outside the process.
pub trait OwnerSource: Send + 'static {
    /// Reads the source's rows, all of them. Blocking is fine (this runs on
    /// the source's own thread); the runner enforces the timeout.
    fn fetch(&mut self) -> Result<OwnerMap, FetchError>;

    /// What the runner calls: like [`OwnerSource::fetch`], but a source
    /// that can tell cheaply that its rows are still those of the map the
    /// readers hold (`published`: that map's [`OwnerMap::version`], `None`
    /// before the first) answers [`Fetched::Unchanged`] without building a
    /// map (the mapping file: by its stat, see `file.rs`). By default it
    /// fetches; the runner then compares versions, not rows.
    fn refresh(&mut self, published: Option<u64>) -> Result<Fetched, FetchError> {
        let _ = published;
        self.fetch().map(|m| Fetched::Map(Box::new(m)))
    }
}

/// One refresh's answer.
#[derive(Debug)]
pub enum Fetched {
    /// The rows are those of the map the readers hold.
    Unchanged,
    /// The rows as read now (maybe still equal to the published ones: the
    /// runner checks the version). Boxed: an `OwnerMap` is a few hundred
    /// bytes of tables' headers, moved between threads.
    Map(Box<OwnerMap>),
}

/// Why one fetch failed: `kind` becomes the error counter's label, so it is
/// a fixed word (`connect`, `query`, `parse`), never error text.
#[derive(Debug, thiserror::Error)]
#[error("fetch failed ({kind})")]
pub struct FetchError {
    pub kind: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl FetchError {
    pub fn new(
        kind: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        FetchError {
            kind,
            source: source.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Time between two fetches' starts.
    pub every: Duration,
    /// A fetch running longer than this has failed.
    pub timeout: Duration,
}

/// How a fetched source is doing, for `/metrics` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The last fetch succeeded.
    pub up: bool,
    pub last_success: Option<SystemTime>,
    /// Rows in the published map (the last good one).
    pub rows: usize,
    /// Failed fetches by kind (`timeout`, `panic` or the source's own).
    pub errors: Vec<(&'static str, u64)>,
}

impl Health {
    fn count(&mut self, kind: &'static str) {
        match self.errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((kind, 1)),
        }
    }

    /// Errors of `kind` so far.
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// What a running source shares with its readers.
#[derive(Debug, Default)]
pub struct Published {
    map: RwLock<Arc<OwnerMap>>,
    health: Mutex<Health>,
    /// Maps the tick has let go of ([`Running::retire`]), freed by the
    /// supervisor.
    retired: Mutex<Vec<Arc<OwnerMap>>>,
    /// The first fetch has answered (a map or an error): see
    /// [`Published::wait_first`].
    answered: Mutex<bool>,
    answered_cv: Condvar,
}

impl Published {
    /// The latest map, or `None` if the supervisor is swapping it right now
    /// (the caller keeps the one it has: never wait on a source).
    pub fn try_map(&self) -> Option<Arc<OwnerMap>> {
        self.map.try_read().ok().map(|m| Arc::clone(&m))
    }

    /// Waits until the first fetch has answered, a map or an error, or
    /// `until` passes; `true` if it answered. Only the agent's first tick
    /// waits: without it, a source slower than the collector's first
    /// read (a file read races it; a database takes longer) leaves every
    /// VM ownerless for a tick, and the ledger would bill that tick's
    /// usage, after a restart the whole downtime's, to nobody.
    pub fn wait_first(&self, until: Instant) -> bool {
        let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        while !*answered {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            answered = self
                .answered_cv
                .wait_timeout(answered, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn set_answered(&self) {
        *self.answered.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.answered_cv.notify_all();
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Frees what the tick retired, outside the lock.
    fn drop_retired(&self) {
        let retired =
            std::mem::take(&mut *self.retired.lock().unwrap_or_else(PoisonError::into_inner));
        drop(retired);
    }

    fn update(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.health.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A source running on its threads; dropping it stops them.
pub struct Running {
    pub name: &'static str,
    pub published: Arc<Published>,
    /// The source's fetch timeout: the longest the first tick waits for
    /// its first answer.
    pub timeout: Duration,
    /// A message wakes the supervisor to free retired maps; dropping the
    /// sender stops it.
    wake: mpsc::Sender<()>,
}

impl Running {
    /// Hands a map the tick no longer uses to the source's own thread,
    /// which frees it (if it was the last user) at once: freeing a
    /// 100 000-row map takes tens of milliseconds, which must not land on
    /// the tick that swaps in its successor.
    pub fn retire(&self, map: Arc<OwnerMap>) {
        self.published
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(map);
        // A supervisor that is gone has nothing left to free for.
        let _ = self.wake.send(());
    }
}

/// Starts `source` on its own threads; the first fetch starts at once.
pub fn spawn(
    name: &'static str,
    mut source: Box<dyn OwnerSource>,
    opts: RunOptions,
) -> std::io::Result<Running> {
    let published = Arc::new(Published::default());
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Each ask carries the version of the map the readers hold.
    let (ask_tx, ask_rx) = mpsc::sync_channel::<Option<u64>>(1);
    let (answer_tx, answer_rx) = mpsc::sync_channel::<Result<Fetched, FetchError>>(1);
    std::thread::Builder::new()
        .name(format!("vmscope-owners-{name}-fetch"))
        .spawn(move || {
            for published in ask_rx {
                if answer_tx.send(source.refresh(published)).is_err() {
                    return;
                }
            }
        })?;
    let shared = Arc::clone(&published);
    std::thread::Builder::new()
        .name(format!("vmscope-owners-{name}"))
        .spawn(move || supervise(name, opts, &shared, &ask_tx, &answer_rx, &stop_rx))?;
    Ok(Running {
        name,
        published,
        timeout: opts.timeout,
        wake: stop_tx,
    })
}

fn supervise(
    name: &'static str,
    opts: RunOptions,
    shared: &Published,
    ask: &mpsc::SyncSender<Option<u64>>,
    answer: &mpsc::Receiver<Result<Fetched, FetchError>>,
    stop: &mpsc::Receiver<()>,
) {
    let mut hanging = false;
    // The version of the published map (`None`: the empty one at start).
    // A late answer that was dropped never becomes it, so the source is
    // always asked relative to what the readers really hold.
    let mut published: Option<u64> = None;
    loop {
        let started = Instant::now();
        if hanging {
            match answer.try_recv() {
                // The overdue fetch finished: drop its answer, ask afresh.
                Ok(_) => hanging = false,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return panicked(name, shared),
            }
        }
        let timed_out = || ("timeout", format!("no answer within {:?}", opts.timeout));
        let outcome = if hanging {
            Err(timed_out())
        } else if ask.send(published).is_err() {
            return panicked(name, shared);
        } else {
            match answer.recv_timeout(opts.timeout) {
                Ok(Ok(Fetched::Map(map))) if Some(map.version()) == published => {
                    // Equal rows, built again: dropped here, on the source's
                    // thread, and nothing is published.
                    drop(map);
                    Ok(Fetched::Unchanged)
                }
                Ok(Ok(Fetched::Map(map))) => {
                    published = Some(map.version());
                    Ok(Fetched::Map(map))
                }
                Ok(Ok(Fetched::Unchanged)) => Ok(Fetched::Unchanged),
                Ok(Err(e)) => Err((e.kind, format!("{e}: {}", e.source))),
                Err(RecvTimeoutError::Timeout) => {
                    hanging = true;
                    Err(timed_out())
                }
                Err(RecvTimeoutError::Disconnected) => return panicked(name, shared),
            }
        };
        let ok = outcome.is_ok();
        record(name, shared, outcome);
        crate::export::tasks::global().report(
            crate::export::tasks::OWNER_REFRESH,
            started.elapsed(),
            ok,
        );
        loop {
            shared.drop_retired();
            match stop.recv_timeout(opts.every.saturating_sub(started.elapsed())) {
                // The tick retired a map: free it, then keep waiting.
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                // The handle was dropped: vmscope is shutting down.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Publishes a changed map (the tick re-resolves only then), notes an
/// unchanged refresh, or counts the error; logs when `up` changes.
fn record(
    name: &'static str,
    shared: &Published,
    outcome: Result<Fetched, (&'static str, String)>,
) {
    let was_up = shared.health().up;
    match outcome {
        Ok(fetched) => {
            let rows = match fetched {
                Fetched::Map(mut map) => {
                    let rows = map.len();
                    // Outside the lock: compacting reallocates the tables.
                    map.compact();
                    let map = Arc::new(*map);
                    let old = std::mem::replace(
                        &mut *shared.map.write().unwrap_or_else(PoisonError::into_inner),
                        map,
                    );
                    // Freed here, on the source's thread, if the tick no
                    // longer holds it.
                    drop(old);
                    Some(rows)
                }
                Fetched::Unchanged => None,
            };
            shared.update(|h| {
                h.up = true;
                h.last_success = Some(SystemTime::now());
                if let Some(rows) = rows {
                    h.rows = rows;
                }
            });
            let rows = shared.health().rows;
            if !was_up {
                tracing::info!(source = name, rows, "owner source up");
            }
        }
        Err((kind, error)) => {
            shared.update(|h| {
                h.up = false;
                h.count(kind);
            });
            // The first failure, and each failure after a success: not every
            // refresh of a source that stays down (those are counted).
            if was_up || shared.health().errors.iter().map(|(_, n)| n).sum::<u64>() == 1 {
                tracing::warn!(source = name, kind, error = %error, "owner source down; keeping its last good rows");
            } else {
                tracing::debug!(source = name, kind, error = %error, "owner source still down");
            }
        }
    }
    shared.set_answered();
}

fn panicked(name: &'static str, shared: &Published) {
    record(
        name,
        shared,
        Err(("panic", "the fetch panicked".to_owned())),
    );
    tracing::error!(
        source = name,
        "owner source stopped (its fetch panicked); keeping its last rows"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;
    use crate::model::Owner;
    use crate::owners::VmKey;

    /// What the in-test source does on each fetch, set by the test.
    #[derive(Clone)]
    enum Mode {
        Rows(&'static str),
        Fail,
        /// Blocks until the flag is set, then answers an empty map.
        Hang(Arc<AtomicBool>),
        Panic,
    }

    struct InTest {
        mode: Arc<Mutex<Mode>>,
        fetches: Arc<AtomicU32>,
    }

    impl OwnerSource for InTest {
        fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let mode = self.mode.lock().unwrap().clone();
            match mode {
                Mode::Rows(user) => Ok([(
                    VmKey::Name("web".into()),
                    Owner {
                        user_name: Some(user.into()),
                        ..Owner::default()
                    },
                )]
                .into_iter()
                .collect()),
                Mode::Fail => Err(FetchError::new("query", "connection refused")),
                Mode::Hang(released) => {
                    while !released.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Ok(OwnerMap::default())
                }
                Mode::Panic => panic!("the in-test source panics"),
            }
        }
    }

    const FAST: RunOptions = RunOptions {
        every: Duration::from_millis(20),
        timeout: Duration::from_millis(60),
    };

    struct Test {
        r: Running,
        mode: Arc<Mutex<Mode>>,
        fetches: Arc<AtomicU32>,
    }

    impl Test {
        fn start(mode: Mode) -> Test {
            let mode = Arc::new(Mutex::new(mode));
            let fetches = Arc::new(AtomicU32::new(0));
            let source = InTest {
                mode: Arc::clone(&mode),
                fetches: Arc::clone(&fetches),
            };
            let r = spawn("test", Box::new(source), FAST).unwrap();
            Test { r, mode, fetches }
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn health(&self) -> Health {
            self.r.published.health()
        }

        fn user_of_web(&self) -> Option<String> {
            let map = self.r.published.try_map()?;
            let vm = crate::owners::VmFacts {
                id: "x",
                uuid: None,
                name: "web",
                pid: 1,
                process: None,
                libvirt: None,
            };
            map.lookup(&vm).and_then(|o| o.user_name.clone())
        }
    }

    /// Waits (a loaded CI machine is slow) until `f` holds.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn publishes_rows_and_keeps_the_last_good_map_when_a_fetch_fails() {
        let t = Test::start(Mode::Rows("alice"));
        eventually("the first map", || t.user_of_web().is_some());
        let h = t.health();
        assert!(h.up);
        assert_eq!(h.rows, 1);
        assert!(h.last_success.is_some());

        t.set(Mode::Fail);
        eventually("the failure", || t.health().errors_of("query") >= 1);
        assert!(!t.health().up);
        assert_eq!(t.user_of_web().as_deref(), Some("alice"));

        t.set(Mode::Rows("bob"));
        eventually("recovery", || t.user_of_web().as_deref() == Some("bob"));
        assert!(t.health().up);
    }

    #[test]
    fn a_hung_fetch_times_out_keeps_the_map_and_starts_no_second_fetch() {
        let t = Test::start(Mode::Rows("alice"));
        eventually("the first map", || t.health().up);

        let released = Arc::new(AtomicBool::new(false));
        t.set(Mode::Hang(Arc::clone(&released)));
        eventually("a timeout", || t.health().errors_of("timeout") >= 1);
        let hung_at = t.fetches.load(Ordering::SeqCst);
        eventually("more intervals", || t.health().errors_of("timeout") >= 3);
        let h = t.health();
        assert!(!h.up);
        assert_eq!(h.rows, 1);
        assert_eq!(t.user_of_web().as_deref(), Some("alice"));
        // Still hanging: no fetch was started on top of it.
        assert_eq!(t.fetches.load(Ordering::SeqCst), hung_at);

        // Released: its late (empty) answer is dropped, the next fetch runs.
        t.set(Mode::Rows("carol"));
        released.store(true, Ordering::SeqCst);
        eventually("recovery", || t.user_of_web().as_deref() == Some("carol"));
        assert!(t.health().up);
    }

    #[test]
    fn the_readers_map_is_replaced_only_when_the_rows_change() {
        let t = Test::start(Mode::Rows("alice"));
        eventually("the first map", || t.health().up);
        let first = t.r.published.try_map().unwrap();
        let before = t.health().last_success;
        eventually("another success", || t.health().last_success != before);
        assert!(Arc::ptr_eq(&first, &t.r.published.try_map().unwrap()));
    }

    /// Builds its map once, then answers `Unchanged` whenever the readers
    /// hold a map; records what it was asked with.
    struct Remembers {
        asked: Arc<Mutex<Vec<Option<u64>>>>,
    }

    impl OwnerSource for Remembers {
        fn fetch(&mut self) -> Result<OwnerMap, FetchError> {
            Ok([(
                VmKey::Pid(7),
                Owner {
                    user_id: Some("u".into()),
                    ..Owner::default()
                },
            )]
            .into_iter()
            .collect())
        }

        fn refresh(&mut self, published: Option<u64>) -> Result<Fetched, FetchError> {
            self.asked.lock().unwrap().push(published);
            match published {
                Some(_) => Ok(Fetched::Unchanged),
                None => self.fetch().map(|m| Fetched::Map(Box::new(m))),
            }
        }
    }

    #[test]
    fn a_source_is_asked_relative_to_the_map_the_readers_hold() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let source = Remembers {
            asked: Arc::clone(&asked),
        };
        let r = spawn("test", Box::new(source), FAST).unwrap();
        eventually("three refreshes", || asked.lock().unwrap().len() >= 3);
        let map = r.published.try_map().unwrap();
        assert_eq!(map.len(), 1);
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked[0], None);
        assert!(
            asked[1..].iter().all(|v| *v == Some(map.version())),
            "{asked:?}"
        );
        // Unchanged answers still count as successes, with the rows kept.
        let h = r.published.health();
        assert!(h.up);
        assert_eq!(h.rows, 1);
    }

    #[test]
    fn a_retired_map_is_freed_on_the_sources_thread_at_once() {
        // An interval far longer than the test: only the wake-up can free it.
        let source = InTest {
            mode: Arc::new(Mutex::new(Mode::Rows("alice"))),
            fetches: Arc::new(AtomicU32::new(0)),
        };
        let slow = RunOptions {
            every: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
        };
        let r = spawn("test", Box::new(source), slow).unwrap();
        eventually("the first map", || r.published.health().up);
        let old = Arc::new(OwnerMap::default());
        let weak = Arc::downgrade(&old);
        r.retire(old);
        eventually("the retired map freed", || weak.upgrade().is_none());
    }

    #[test]
    fn a_panicking_source_keeps_its_last_map_and_says_so() {
        let t = Test::start(Mode::Rows("alice"));
        eventually("the first map", || t.health().up);
        t.set(Mode::Panic);
        eventually("the panic", || t.health().errors_of("panic") == 1);
        assert!(!t.health().up);
        assert_eq!(t.user_of_web().as_deref(), Some("alice"));
    }
}
