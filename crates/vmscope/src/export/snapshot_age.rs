//! `vmscope_snapshot_age_seconds`: how old the served snapshot is right now.
//!
//! The snapshot's own families are encoded once per tick; this one is a live
//! source, computed per scrape, so a stalled collector shows up as a growing
//! age even though the cached exposition does not change.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::export::{Desc, MetricSource, MetricWriter};
use crate::model::Snapshot;

static AGE: Desc = Desc::gauge(
    "vmscope_snapshot_age_seconds",
    "Seconds since the served snapshot was collected (absent before the first collection).",
);

pub struct SnapshotAge {
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl SnapshotAge {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        SnapshotAge { snapshots }
    }
}

impl MetricSource for SnapshotAge {
    fn encode(&self, out: &mut MetricWriter<'_>) {
        let collected_at = {
            let s = self.snapshots.borrow();
            (s.seq > 0).then_some(s.collected_at)
        };
        out.family(&AGE);
        if let Some(t) = collected_at {
            let age = SystemTime::now()
                .duration_since(t)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            out.sample(&[], age);
        }
    }

    /// The age moves with the clock between any two requests.
    fn volatile(&self) -> bool {
        true
    }
}
