//! What this worker process holds right now: the task attempts it has received
//! (waiting for a slot, starting, or running), each with the token that cancels
//! it; the cancels that arrived before their task; and the attempts it finished
//! recently, so a redelivery of one is dropped instead of run twice.
//!
//! Everything is in memory and bounded; the durable record of started
//! `at_most_once` attempts is the ledger's. This module knows nothing of AMQP
//! or processes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::domain::TaskId;

/// One attempt of one task.
pub type Key = (TaskId, u32);

/// How many early cancels and finished attempts are remembered.
const REMEMBERED: usize = 4096;

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    early_cancels: Bounded,
    finished: Bounded,
    next_id: u64,
}

struct Entry {
    /// Tells this entry from a later one with the same key.
    id: u64,
    cancel: CancellationToken,
    /// Acked: the broker will not redeliver it, so the entry outlives its session.
    running: bool,
    /// The broker connection it came through (see [`Registry::forget_session`]).
    session: u64,
}

/// An admitted attempt: its entry id and cancel token.
pub struct Ticket {
    pub key: Key,
    pub id: u64,
    pub cancel: CancellationToken,
}

pub enum Admission {
    Admitted(Ticket),
    /// A cancel for it arrived first.
    CancelledEarly,
    /// The same attempt is already held or was finished here.
    Duplicate(&'static str),
}

impl Registry {
    /// Takes in a delivered attempt.
    pub fn admit(&self, key: Key, session: u64) -> Admission {
        let mut inner = self.lock();
        if inner.early_cancels.remove(&key) {
            return Admission::CancelledEarly;
        }
        if inner.finished.contains(&key) {
            return Admission::Duplicate("already finished on this worker");
        }
        if inner.entries.contains_key(&key) {
            return Admission::Duplicate("already held by this worker");
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let cancel = CancellationToken::new();
        inner.entries.insert(
            key,
            Entry {
                id,
                cancel: cancel.clone(),
                running: false,
                session,
            },
        );
        Admission::Admitted(Ticket { key, id, cancel })
    }

    /// Marks the attempt acked. False if the entry was dropped meanwhile (its
    /// session died) and another delivery of the same attempt took its place.
    pub fn mark_running(&self, ticket: &Ticket) -> bool {
        let mut inner = self.lock();
        match inner.entries.get_mut(&ticket.key) {
            Some(e) if e.id == ticket.id => {
                e.running = true;
                true
            }
            Some(_) => false,
            None => {
                let entry = Entry {
                    id: ticket.id,
                    cancel: ticket.cancel.clone(),
                    running: true,
                    session: 0,
                };
                inner.entries.insert(ticket.key, entry);
                true
            }
        }
    }

    /// Drops an attempt that was not run (requeued, redelivered, refused).
    pub fn release(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(&ticket.key)
            .is_some_and(|e| e.id == ticket.id)
        {
            inner.entries.remove(&ticket.key);
        }
    }

    /// Drops an attempt whose result is published (or queued for publishing)
    /// and remembers it as finished.
    pub fn finish(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(&ticket.key)
            .is_some_and(|e| e.id == ticket.id)
        {
            inner.entries.remove(&ticket.key);
        }
        inner.finished.insert(ticket.key);
    }

    /// A cancel for `key`: fires its token if held, else remembers it.
    /// Returns whether a held attempt was cancelled.
    pub fn cancel(&self, key: Key) -> bool {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.get(&key) {
            e.cancel.cancel();
            return true;
        }
        if !inner.finished.contains(&key) {
            inner.early_cancels.insert(key);
        }
        false
    }

    /// Forgets the unacked attempts of a lost connection: the broker requeues
    /// them, and their redelivery on the next connection must be admitted.
    pub fn forget_session(&self, session: u64) {
        self.lock()
            .entries
            .retain(|_, e| e.running || e.session != session);
    }

    /// Nothing received and not finished.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A FIFO-bounded set.
#[derive(Default)]
struct Bounded {
    set: HashSet<Key>,
    order: VecDeque<Key>,
}

impl Bounded {
    fn insert(&mut self, key: Key) {
        if self.set.insert(key) {
            self.order.push_back(key);
            while self.order.len() > REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &Key) -> bool {
        self.set.contains(key)
    }

    fn remove(&mut self, key: &Key) -> bool {
        if self.set.remove(key) {
            self.order.retain(|k| k != key);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(a: Admission) -> Ticket {
        match a {
            Admission::Admitted(t) => t,
            _ => panic!("not admitted"),
        }
    }

    #[test]
    fn early_cancel_drops_the_later_delivery_once() {
        let r = Registry::default();
        let key = (TaskId::new(), 1);
        assert!(!r.cancel(key));
        assert!(matches!(r.admit(key, 1), Admission::CancelledEarly));
        assert!(matches!(r.admit(key, 1), Admission::Admitted(_)));
    }

    #[test]
    fn duplicates_and_finished_attempts_are_refused() {
        let r = Registry::default();
        let key = (TaskId::new(), 1);
        let t = ticket(r.admit(key, 1));
        assert!(matches!(r.admit(key, 1), Admission::Duplicate(_)));
        assert!(r.cancel(key));
        assert!(t.cancel.is_cancelled());
        r.finish(&t);
        assert!(matches!(r.admit(key, 2), Admission::Duplicate(_)));
        assert!(r.is_empty());
        // A new attempt is another key.
        assert!(matches!(r.admit((key.0, 2), 1), Admission::Admitted(_)));
    }

    #[test]
    fn a_lost_session_forgets_only_unacked_attempts() {
        let r = Registry::default();
        let waiting = ticket(r.admit((TaskId::new(), 1), 7));
        let running = ticket(r.admit((TaskId::new(), 1), 7));
        assert!(r.mark_running(&running));
        r.forget_session(7);
        let again = ticket(r.admit(waiting.key, 8));
        assert!(matches!(r.admit(running.key, 8), Admission::Duplicate(_)));
        // The old holder of the forgotten entry cannot take the new one over.
        assert!(!r.mark_running(&waiting));
        r.release(&waiting);
        assert!(r.mark_running(&again));
    }
}
