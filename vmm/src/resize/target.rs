//! The target: what the guest should run, why it is what it is, and a
//! progress signal that wakes whoever waits for the guest to get there.
//!
//! Read lock-free by the API (`status`); written by the resize owner
//! ([`super::start`]) and, when the guest overrides the VMM, by the manager
//! (a rollback makes the target follow what the guest has).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::cpu::lifecycle::Reason;

/// Why the target last changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Cause {
    /// Set at boot.
    Boot,
    /// A `vm.resize`.
    Resize,
    /// The guest did not go along; the target follows what it has.
    Rollback { vcpu: u32, reason: Reason },
    /// Creating or starting a vCPU failed; the target follows what exists.
    VmmError { vcpu: u32, error: String },
}

/// The target and why it is what it is: a snapshot swapped in whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetStatus {
    /// Bumped on every change of the target.
    pub seq: u64,
    pub desired: u32,
    /// A targeted resize: exactly these vCPU ids (sorted), `desired` of them.
    /// `None`: any `desired` ids (lowest free added, highest removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_ids: Option<Vec<u32>>,
    pub cause: Cause,
}

/// A counter bumped whenever anything a waiter looks at may have changed
/// (the target, a vCPU's state, the VM's end), with a condition variable:
/// a waiter reads the counter, checks, and sleeps until it moves, so no
/// change between the check and the sleep is missed.
#[derive(Default)]
pub struct Progress {
    epoch: Mutex<u64>,
    moved: Condvar,
}

impl Progress {
    pub fn epoch(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something changed: wake every waiter.
    pub fn bump(&self) {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.moved.notify_all();
    }

    /// Sleeps until the epoch is past `seen` or `deadline` passes; returns the epoch.
    pub fn wait_past(&self, seen: u64, deadline: Instant) -> u64 {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        while *epoch == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left == Duration::ZERO {
                break;
            }
            epoch = self.moved.wait_timeout(epoch, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        *epoch
    }
}

pub struct Target {
    status: ArcSwap<TargetStatus>,
    seq: AtomicU64,
    desired: AtomicU32,
    progress: Arc<Progress>,
}

impl Target {
    pub fn new(desired: u32) -> Self {
        Target {
            status: ArcSwap::from_pointee(TargetStatus { seq: 0, desired, vcpu_ids: None, cause: Cause::Boot }),
            seq: AtomicU64::new(0),
            desired: AtomicU32::new(desired),
            progress: Arc::default(),
        }
    }

    pub fn status(&self) -> Arc<TargetStatus> {
        self.status.load_full()
    }

    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Acquire)
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Any `desired` vCPUs.
    pub fn set(&self, desired: u32, cause: Cause) -> u64 {
        self.store(desired, None, cause)
    }

    /// Exactly `ids` (sorted, distinct).
    pub fn set_ids(&self, ids: Vec<u32>, cause: Cause) -> u64 {
        self.store(ids.len() as u32, Some(ids), cause)
    }

    fn store(&self, desired: u32, vcpu_ids: Option<Vec<u32>>, cause: Cause) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.desired.store(desired, Ordering::Release);
        self.status.store(Arc::new(TargetStatus { seq, desired, vcpu_ids, cause }));
        self.progress.bump();
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_wakes_on_a_bump_and_not_before() {
        let p = Arc::new(Progress::default());
        let seen = p.epoch();
        // Nothing moves: the wait ends at its deadline with the same epoch.
        assert_eq!(p.wait_past(seen, Instant::now() + Duration::from_millis(1)), seen);
        let waker = {
            let p = p.clone();
            std::thread::spawn(move || p.bump())
        };
        // A generous deadline: the bump, not the deadline, ends this wait.
        assert_eq!(p.wait_past(seen, Instant::now() + Duration::from_secs(60)), seen + 1);
        waker.join().unwrap();
    }

    #[test]
    fn every_store_moves_the_sequence_and_wakes() {
        let t = Target::new(1);
        let e = t.progress().epoch();
        assert_eq!(t.set(3, Cause::Resize), 1);
        assert_eq!(t.set_ids(vec![0, 2], Cause::Resize), 2);
        assert_eq!(t.desired(), 2);
        assert_eq!(t.progress().epoch(), e + 2);
    }
}
