//! What every hotplug lifecycle in lithe shares: a state that packs into one
//! atomic word (so a reason can never lag behind its phase), one table of
//! transitions, and [`apply`], which moves one id through that table with a
//! compare-and-swap. The main loop and vCPU threads (inside the guest's
//! `_OST`/`_EJ0` writes) both move ids only through it; an event the table
//! does not list for the current state changes nothing.
//!
//! vCPUs ([`crate::lifecycle`]) and memory slots (lithe's
//! `memory_hotplug::slots`) are the two machines today.

use std::fmt;

use crate::sync::{AtomicU32, Ordering};

/// A lifecycle: its states, its events and its table.
pub trait Machine {
    type State: Copy + PartialEq + fmt::Debug;
    type Event: Copy + fmt::Debug;
    /// What a log line calls one id ("vCPU", "memory slot").
    const NOUN: &'static str;
    fn encode(s: Self::State) -> u32;
    /// Inverse of [`encode`](Machine::encode); unknown words decode to the initial state.
    fn decode(word: u32) -> Self::State;
    /// The transition table: the next state, or `None` if `event` does not apply.
    fn step(s: Self::State, event: Self::Event) -> Option<Self::State>;
}

/// Where the ids' state words live.
pub trait StateCell {
    fn load(&self, id: u32) -> Option<u32>;
    /// Replaces `old` by `new`; on failure returns the current word.
    fn compare_exchange(&self, id: u32, old: u32, new: u32) -> Result<(), u32>;
}

/// A transition that took place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition<S> {
    pub from: S,
    pub to: S,
}

/// Applies `event` to `id` atomically. `None`: the event does not apply to
/// the id's state (or the id is out of range); nothing changed.
pub fn apply<M: Machine>(cell: &impl StateCell, id: u32, event: M::Event) -> Option<Transition<M::State>> {
    let mut word = cell.load(id)?;
    loop {
        let from = M::decode(word);
        let Some(to) = M::step(from, event) else {
            log::debug!("{} {id}: {event:?} does not apply in state {from:?}; ignored", M::NOUN);
            return None;
        };
        match cell.compare_exchange(id, word, M::encode(to)) {
            Ok(()) => return Some(Transition { from, to }),
            Err(current) => word = current,
        }
    }
}

/// A plain array of state words, for a machine whose ids need nothing else
/// next to their state (the vCPU table keeps its words in its own slots).
pub struct Cells(Box<[AtomicU32]>);

impl Cells {
    /// `n` ids, each in the state whose word is 0.
    pub fn new(n: usize) -> Cells {
        Cells((0..n).map(|_| AtomicU32::new(0)).collect())
    }
}

impl StateCell for Cells {
    fn load(&self, id: u32) -> Option<u32> {
        self.0.get(id as usize).map(|c| c.load(Ordering::Acquire))
    }

    fn compare_exchange(&self, id: u32, old: u32, new: u32) -> Result<(), u32> {
        let c = self.0.get(id as usize).ok_or(old)?;
        c.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
    }
}
