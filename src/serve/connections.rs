//! The open connections of one [`Serve`](super::Serve): the connection cap,
//! which connection is idle and since when, and shedding the longest-idle
//! one to make room for a new one.
//!
//! A connection is *idle* when no request of it is in the application and
//! no response body of it is still being sent: it is waiting for its first
//! request, between keep-alive requests, or sending a request head that has
//! not ended (a half-open or slow client). Only idle connections are shed or
//! timed out; a request in flight or an open event stream never is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Set in [`Conn::state`] once the connection is being closed; the low bits
/// count the requests in flight.
const CLOSING: u64 = 1 << 63;

/// The connection table of one server: at most `cap` entries (the table is
/// the cap; it is not a cache, so it is not a `TtlCache`).
#[derive(Debug)]
pub(super) struct Connections {
    cap: usize,
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
}

/// What [`Connections::admit`] decided for a new connection.
#[derive(Debug)]
pub(super) enum Admission {
    /// Below the cap: serve it.
    Admitted(Registration),
    /// At the cap: the longest-idle connection was told to close; serve the
    /// new one in its place.
    Replaced(Registration),
    /// At the cap and every connection busy: refuse the new one.
    Full,
}

impl Connections {
    /// A table for at most `cap` connections (at least one).
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Connections {
            cap: cap.max(1),
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        })
    }

    /// Make room for a new connection, shedding the longest-idle one if the
    /// table is full.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let now = self.now();
        let mut table = self.lock();
        let replaced = if table.open.len() < self.cap {
            false
        } else {
            // At the cap: O(cap) under the lock, only while the cap is
            // reached; a connection that turned busy meanwhile refuses the
            // close and the next candidate is tried.
            let mut candidates: Vec<(u64, u64)> = table
                .open
                .values()
                .filter(|c| c.state.load(Ordering::Acquire) == 0)
                .map(|c| (c.idle_since.load(Ordering::Acquire), c.id))
                .collect();
            candidates.sort_unstable();
            let shed = candidates
                .into_iter()
                .find(|(_, id)| table.open.get(id).is_some_and(|c| c.try_close()));
            match shed {
                Some((_, id)) => {
                    if let Some(conn) = table.open.remove(&id) {
                        conn.close.notify_one();
                    }
                    true
                }
                None => return Admission::Full,
            }
        };
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            state: AtomicU64::new(0),
            idle_since: AtomicU64::new(now),
            close: Notify::new(),
        });
        table.open.insert(id, conn.clone());
        let registration = Registration {
            conn,
            table: self.clone(),
        };
        if replaced {
            Admission::Replaced(registration)
        } else {
            Admission::Admitted(registration)
        }
    }

    /// How many connections are open.
    #[cfg(any(test, feature = "telemetry"))]
    pub(super) fn len(&self) -> usize {
        self.lock().open.len()
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; a poisoned table is still
        // consistent (plain inserts and removes).
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One open connection's entry, shared by its task and its requests.
#[derive(Debug)]
pub(super) struct Conn {
    id: u64,
    epoch: Instant,
    /// Requests in flight (low bits) and [`CLOSING`].
    state: AtomicU64,
    /// Milliseconds since the table's epoch at which it last became idle.
    idle_since: AtomicU64,
    /// Notified once when the connection was shed.
    close: Notify,
}

impl Conn {
    /// Mark the connection closing if it is idle; false if it is busy (or
    /// already closing).
    fn try_close(&self) -> bool {
        self.state
            .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A request starts: the connection is busy until the returned guard
    /// (kept with the response body) drops. `None` if the connection is
    /// already closing.
    pub(super) fn begin(self: &Arc<Self>) -> Option<Busy> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & CLOSING != 0 {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Busy { conn: self.clone() }),
                Err(now) => state = now,
            }
        }
    }

    /// Wait until this connection is shed.
    pub(super) async fn shed(&self) {
        self.close.notified().await;
    }

    /// When this connection's idle time runs out (it may be busy by then).
    pub(super) fn idle_deadline(&self, idle_timeout: Duration) -> tokio::time::Instant {
        let since = self.epoch + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        let deadline = if self.state.load(Ordering::Acquire) == 0 {
            since + idle_timeout
        } else {
            Instant::now() + idle_timeout
        };
        tokio::time::Instant::from_std(deadline)
    }

    /// Close the connection if it has been idle for `idle_timeout`; false
    /// (keep it) if it is busy or became idle later.
    pub(super) fn close_if_idle(&self, idle_timeout: Duration) -> bool {
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(since) >= idle_timeout && self.try_close()
    }
}

/// A request in flight on a [`Conn`]; dropping it ends the request.
#[derive(Debug)]
pub(super) struct Busy {
    conn: Arc<Conn>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle since now, if this was the last request (write the time
        // first: a shedder sees state 0 only after it).
        let now = millis(self.conn.epoch.elapsed());
        self.conn.idle_since.store(now, Ordering::Release);
        self.conn.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place in the table, given up when its task ends.
#[derive(Debug)]
pub(super) struct Registration {
    conn: Arc<Conn>,
    table: Arc<Connections>,
}

impl Registration {
    /// The connection's entry.
    pub(super) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.conn.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Registration {
        match admission {
            Admission::Admitted(r) | Admission::Replaced(r) => r,
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_longest_idle_connection_is_shed_at_the_cap() {
        let table = Connections::new(2);
        let first = admitted(table.admit());
        std::thread::sleep(Duration::from_millis(5));
        let second = admitted(table.admit());
        assert_eq!(table.len(), 2);
        let third = table.admit();
        assert!(matches!(third, Admission::Replaced(_)));
        // The first (idle longest) was told to close and cannot start a request.
        assert!(first.conn().begin().is_none());
        assert!(second.conn().begin().is_some());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_busy_connection_is_never_shed() {
        let table = Connections::new(1);
        let only = admitted(table.admit());
        let busy = only.conn().begin().unwrap();
        assert!(matches!(table.admit(), Admission::Full));
        assert_eq!(table.len(), 1);
        drop(busy);
        assert!(matches!(table.admit(), Admission::Replaced(_)));
    }

    #[test]
    fn a_closed_connection_gives_its_place_back() {
        let table = Connections::new(1);
        let only = admitted(table.admit());
        drop(only);
        assert_eq!(table.len(), 0);
        assert!(matches!(table.admit(), Admission::Admitted(_)));
    }

    #[test]
    fn idle_time_counts_from_the_last_request() {
        let table = Connections::new(1);
        let only = admitted(table.admit());
        let busy = only.conn().begin().unwrap();
        assert!(!only.conn().close_if_idle(Duration::ZERO), "busy");
        drop(busy);
        assert!(!only.conn().close_if_idle(Duration::from_secs(60)));
        assert!(only.conn().close_if_idle(Duration::ZERO));
        assert!(only.conn().begin().is_none(), "closing");
    }
}
