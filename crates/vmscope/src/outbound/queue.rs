//! A bounded FIFO that never blocks its producer, with drop accounting.
//!
//! Reads: items pushed by one producer (the watchdog loop, a pusher's
//! tick). Emits: items to one consumer task, in order; on overflow the
//! item dropped to make room, returned to the producer to record, and a
//! running count of drops ([`BoundedQueue::dropped`]). Never fails; a
//! poisoned lock is taken over (the queue holds plain data).
//!
//! Beyond `capacity` the queue sheds the first item the `cheapest`
//! predicate picks (e.g. recovery notices), else the oldest: while a
//! receiver is down the newest state is worth more than the oldest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

pub struct BoundedQueue<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
    capacity: usize,
    cheapest: fn(&T) -> bool,
    dropped: AtomicU64,
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> BoundedQueue<T> {
    /// At least one item fits. `cheapest` picks what goes first when full.
    pub fn new(capacity: usize, cheapest: fn(&T) -> bool) -> Self {
        BoundedQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                closed: false,
            }),
            notify: Notify::new(),
            capacity: capacity.max(1),
            cheapest,
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue; returns the item dropped to make room, if any.
    pub fn push(&self, item: T) -> Option<T> {
        let dropped = {
            let mut q = self.lock();
            let dropped = if q.items.len() >= self.capacity {
                let idx = q.items.iter().position(self.cheapest).unwrap_or(0);
                q.items.remove(idx)
            } else {
                None
            };
            q.items.push_back(item);
            dropped
        };
        if dropped.is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        dropped
    }

    /// The next item; `None` once closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.lock();
                if let Some(item) = q.items.pop_front() {
                    return Some(item);
                }
                if q.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more pushes are expected: `pop` drains what is left, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped on overflow since the queue was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd numbers play the cheap items.
    fn odd(x: &u32) -> bool {
        x % 2 == 1
    }

    #[tokio::test]
    async fn full_queue_drops_cheap_items_first_then_the_oldest_and_counts() {
        let q = BoundedQueue::new(3, odd);
        assert!(q.push(2).is_none());
        assert!(q.push(1).is_none());
        assert!(q.push(4).is_none());
        assert_eq!(q.dropped(), 0);
        assert_eq!(q.push(6), Some(1));
        assert_eq!(q.push(8), Some(2));
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.len(), 3);
        q.close();
        let mut left = Vec::new();
        while let Some(x) = q.pop().await {
            left.push(x);
        }
        assert_eq!(left, [4, 6, 8]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn capacity_zero_still_holds_one() {
        let q = BoundedQueue::new(0, |_: &u32| false);
        assert!(q.push(1).is_none());
        assert_eq!(q.push(2), Some(1));
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = std::sync::Arc::new(BoundedQueue::new(4, |_: &u32| false));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop().await });
        tokio::task::yield_now().await;
        q.push(7);
        assert_eq!(waiter.await.unwrap(), Some(7));
    }
}
