//! The hotplug life of one vCPU id: every state, every event, and the one
//! table of transitions between them. The manager (main loop) and the MMIO
//! host (vCPU threads, inside the guest's `_OST`/`_EJ0` writes) both move a
//! vCPU only through [`step`], applied atomically by [`apply`]; an event that
//! does not apply to the current state is logged and ignored.
//!
//! | from                          | event             | to                              | why |
//! |-------------------------------|-------------------|---------------------------------|-----|
//! | absent, parked                | `Add`             | adding                          | resize up: thread started, guest notified |
//! | adding                        | `AddAcked`        | acknowledged                    | guest `_OST(1, 0)`: it added the CPU |
//! | adding, acknowledged          | `Started`         | running                         | the vCPU left wait-for-SIPI: the guest runs on it |
//! | removing(adding/acknowledged) | `Started`         | removing(running)               | same, while an eject is asked for |
//! | adding                        | `AddFailed`       | ejected, `add_failed`           | guest `_OST(1, failure)`: it does not have the CPU |
//! | adding                        | `AddWithdrawn`    | ejected, `add_cancelled`        | the VMM took the insert back before the guest saw it |
//! | adding                        | `AddTimedOut`     | ejected, `add_timeout`          | the guest never saw the insert within the bound |
//! | adding, acknowledged, running | `Remove`          | removing(from)                  | resize down: eject requested |
//! | adding                        | `AddUnanswered`   | removing(adding), `add_timeout` | the guest saw the insert but did nothing: ask it to eject |
//! | removing(from)                | `RemoveWithdrawn` | from                            | the VMM took the request back before the guest saw it |
//! | removing(adding)              | `EjectRefused`    | acknowledged, `eject_refused`   | the guest keeps a CPU it never acknowledged: so it has it |
//! | removing(from)                | `EjectRefused`    | from, `eject_refused`           | guest `_OST(3, failure)` |
//! | removing(adding)              | `EjectTimedOut`   | ejected, `add_timeout`          | the guest never acknowledged, ran or ejected it: retire it |
//! | removing(from)                | `EjectTimedOut`   | from, `eject_timeout`           | no `_EJ0` within the bound |
//! | removing                      | `Ejected`         | ejected                         | guest `_EJ0`, as asked |
//! | adding, acknowledged, running | `Ejected`         | ejected, `ejected_by_guest`     | guest `_EJ0` on its own (sysfs eject, or a late one) |
//! | any live state                | `Stop`            | ejected                         | VM teardown |
//! | ejected                       | `Retired`         | parked                          | grace period over, thread joined, fd parked |
//! | ejected                       | `StopTimedOut`    | stuck                           | the thread did not stop: its id is not reused |
//! | stuck                         | `Retired`         | parked                          | it stopped after all |
//!
//! "Live" is adding, acknowledged, running and removing: the vCPU has a
//! thread and the guest may know it. The guest's `_STA` reads presence from
//! [`State::guest_present`], so what the guest is told and what the VMM
//! tracks can never drift apart.

use std::fmt;

use crate::machine::Machine;

/// Where a vCPU id is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Phase {
    /// Never created.
    Absent = 0,
    /// Created and started; the guest was asked to add it and has not answered.
    Adding = 1,
    /// The guest's `_OST` said it added the CPU; it has not started running on it.
    Acknowledged = 2,
    /// The guest runs on it (the vCPU left wait-for-SIPI, or was a boot vCPU).
    Running = 3,
    /// The VMM asked the guest to eject it.
    Removing = 4,
    /// The guest ejected it (or the VM is stopping); retirement is under way.
    Ejected = 5,
    /// Retired: thread joined, KVM vCPU kept for reuse.
    Parked = 6,
    /// Its thread did not stop when asked; the id is not reused until it does.
    Stuck = 7,
}

impl Phase {
    /// Every phase, in order (docs and API checks list them from here).
    pub const ALL: [Phase; 8] = [
        Phase::Absent,
        Phase::Adding,
        Phase::Acknowledged,
        Phase::Running,
        Phase::Removing,
        Phase::Ejected,
        Phase::Parked,
        Phase::Stuck,
    ];
}

/// Why a vCPU is where it is, when that is not what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Reason {
    None = 0,
    /// The guest answered the eject request with a failure `_OST`.
    EjectRefused = 1,
    /// The guest did not eject within the bound.
    EjectTimeout = 2,
    /// The guest answered the hot-add with a failure `_OST`.
    AddFailed = 3,
    /// The guest did not take or answer the hot-add within the bound.
    AddTimeout = 4,
    /// A resize down took the hot-add back before the guest saw it.
    AddCancelled = 5,
    /// The guest ejected the vCPU without being asked.
    EjectedByGuest = 6,
}

impl Reason {
    /// Every reason, in order.
    pub const ALL: [Reason; 7] = [
        Reason::None,
        Reason::EjectRefused,
        Reason::EjectTimeout,
        Reason::AddFailed,
        Reason::AddTimeout,
        Reason::AddCancelled,
        Reason::EjectedByGuest,
    ];
}

/// The full state of one id: phase, the phase a removal would roll back to,
/// and the reason of the last rollback. Packed into one atomic word, so the
/// reason can never lag behind the phase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    pub phase: Phase,
    /// For `Removing`: the phase the vCPU had when the removal was asked for.
    pub from: Phase,
    pub reason: Reason,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.phase, self.reason) {
            (Phase::Removing, Reason::None) => write!(f, "removing(from {:?})", self.from),
            (Phase::Removing, r) => write!(f, "removing(from {:?}, {r:?})", self.from),
            (p, Reason::None) => write!(f, "{p:?}"),
            (p, r) => write!(f, "{p:?}({r:?})"),
        }
    }
}

/// What happened to a vCPU. See the module table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Add,
    AddAcked,
    Started,
    AddFailed,
    AddWithdrawn,
    AddTimedOut,
    AddUnanswered,
    Remove,
    RemoveWithdrawn,
    EjectRefused,
    EjectTimedOut,
    Ejected,
    Stop,
    Retired,
    StopTimedOut,
}

impl State {
    pub const ABSENT: State = State { phase: Phase::Absent, from: Phase::Absent, reason: Reason::None };

    pub const fn new(phase: Phase) -> State {
        State { phase, from: Phase::Absent, reason: Reason::None }
    }

    const fn with(phase: Phase, reason: Reason) -> State {
        State { phase, from: Phase::Absent, reason }
    }

    /// The vCPU has a thread and the guest has, or is being given, the CPU.
    pub fn is_live(self) -> bool {
        matches!(self.phase, Phase::Adding | Phase::Acknowledged | Phase::Running | Phase::Removing)
    }

    /// Counts towards the desired number of vCPUs: live and not being removed.
    pub fn is_wanted(self) -> bool {
        matches!(self.phase, Phase::Adding | Phase::Acknowledged | Phase::Running)
    }

    /// Free for a hot-add.
    pub fn is_free(self) -> bool {
        matches!(self.phase, Phase::Absent | Phase::Parked)
    }

    /// What the guest's `_STA` says: present while live.
    pub fn guest_present(self) -> bool {
        self.is_live()
    }

    /// A transitional phase: the guest or the VMM still has work to do.
    pub fn is_settling(self) -> bool {
        matches!(self.phase, Phase::Adding | Phase::Acknowledged | Phase::Removing | Phase::Ejected)
    }

    pub fn encode(self) -> u32 {
        u32::from(self.phase as u8) | u32::from(self.from as u8) << 8 | u32::from(self.reason as u8) << 16
    }

    /// Inverse of [`encode`](State::encode); unknown values decode as absent.
    pub fn decode(word: u32) -> State {
        let phase = |b: u32| match b & 0xff {
            1 => Phase::Adding,
            2 => Phase::Acknowledged,
            3 => Phase::Running,
            4 => Phase::Removing,
            5 => Phase::Ejected,
            6 => Phase::Parked,
            7 => Phase::Stuck,
            _ => Phase::Absent,
        };
        let reason = match (word >> 16) & 0xff {
            1 => Reason::EjectRefused,
            2 => Reason::EjectTimeout,
            3 => Reason::AddFailed,
            4 => Reason::AddTimeout,
            5 => Reason::AddCancelled,
            6 => Reason::EjectedByGuest,
            _ => Reason::None,
        };
        State { phase: phase(word), from: phase(word >> 8), reason }
    }
}

/// The transition table: the next state, or `None` if `event` does not apply.
pub fn step(s: State, event: Event) -> Option<State> {
    use Event as E;
    use Phase::*;
    let removing = |from: Phase, reason: Reason| State { phase: Removing, from, reason };
    Some(match (s.phase, event) {
        (Absent | Parked, E::Add) => State::new(Adding),
        (Adding, E::AddAcked) => State::new(Acknowledged),
        (Adding | Acknowledged, E::Started) => State::new(Running),
        (Removing, E::Started) if matches!(s.from, Adding | Acknowledged) => removing(Running, s.reason),
        (Adding, E::AddFailed) => State::with(Ejected, Reason::AddFailed),
        (Adding, E::AddWithdrawn) => State::with(Ejected, Reason::AddCancelled),
        (Adding, E::AddTimedOut) => State::with(Ejected, Reason::AddTimeout),
        (Adding | Acknowledged | Running, E::Remove) => removing(s.phase, Reason::None),
        (Adding, E::AddUnanswered) => removing(Adding, Reason::AddTimeout),
        (Removing, E::RemoveWithdrawn) => State::new(s.from),
        (Removing, E::EjectRefused) if s.from == Adding => State::with(Acknowledged, Reason::EjectRefused),
        (Removing, E::EjectRefused) => State::with(s.from, Reason::EjectRefused),
        (Removing, E::EjectTimedOut) if s.from == Adding => State::with(Ejected, Reason::AddTimeout),
        (Removing, E::EjectTimedOut) => State::with(s.from, Reason::EjectTimeout),
        (Removing, E::Ejected) => State::with(Ejected, s.reason),
        (Adding | Acknowledged | Running, E::Ejected) => State::with(Ejected, Reason::EjectedByGuest),
        (Adding | Acknowledged | Running | Removing, E::Stop) => State::with(Ejected, s.reason),
        (Ejected | Stuck, E::Retired) => State::with(Parked, s.reason),
        (Ejected, E::StopTimedOut) => State::with(Stuck, s.reason),
        _ => return None,
    })
}

pub use crate::machine::StateCell;

/// The vCPU lifecycle as a [`Machine`]: the table above, one word per id.
pub struct Vcpu;

impl Machine for Vcpu {
    type State = State;
    type Event = Event;
    const NOUN: &'static str = "vCPU";
    fn encode(s: State) -> u32 {
        s.encode()
    }
    fn decode(word: u32) -> State {
        State::decode(word)
    }
    fn step(s: State, event: Event) -> Option<State> {
        step(s, event)
    }
}

/// A vCPU transition that took place.
pub type Transition = crate::machine::Transition<State>;

/// Applies `event` to vCPU `id` atomically ([`crate::machine::apply`]).
/// `None`: the event does not apply to the vCPU's state (or the id is out of
/// range); nothing changed. The caller reports the transition (lithe's
/// `cpu::apply` emits it as an event).
pub fn apply(cell: &impl StateCell, id: u32, event: Event) -> Option<Transition> {
    crate::machine::apply::<Vcpu>(cell, id, event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const PHASES: [Phase; 8] = Phase::ALL;
    const REASONS: [Reason; 7] = Reason::ALL;
    const EVENTS: [Event; 15] = [
        Event::Add,
        Event::AddAcked,
        Event::Started,
        Event::AddFailed,
        Event::AddWithdrawn,
        Event::AddTimedOut,
        Event::AddUnanswered,
        Event::Remove,
        Event::RemoveWithdrawn,
        Event::EjectRefused,
        Event::EjectTimedOut,
        Event::Ejected,
        Event::Stop,
        Event::Retired,
        Event::StopTimedOut,
    ];

    fn all_states() -> impl Iterator<Item = State> {
        PHASES.into_iter().flat_map(|phase| {
            PHASES
                .into_iter()
                .flat_map(move |from| REASONS.into_iter().map(move |reason| State { phase, from, reason }))
        })
    }

    #[test]
    fn encoding_round_trips() {
        for s in all_states() {
            assert_eq!(State::decode(s.encode()), s);
        }
        assert_eq!(State::decode(0), State::ABSENT);
        assert_eq!(State::decode(u32::MAX).phase, Phase::Absent);
    }

    /// Whatever happens, a removal rolls back to the phase the vCPU had: the
    /// bug where a never-added vCPU came back "online" cannot recur.
    #[test]
    fn rollbacks_return_to_the_phase_before_the_removal() {
        for from in [Phase::Acknowledged, Phase::Running] {
            let removing = step(State::new(from), Event::Remove).unwrap();
            assert_eq!(removing.phase, Phase::Removing);
            assert_eq!(step(removing, Event::EjectTimedOut).unwrap(), State::with(from, Reason::EjectTimeout));
            assert_eq!(step(removing, Event::EjectRefused).unwrap(), State::with(from, Reason::EjectRefused));
            assert_eq!(step(removing, Event::RemoveWithdrawn).unwrap(), State::new(from));
        }
        // A vCPU the guest never acknowledged: a refusal shows the guest has
        // it; silence shows nothing, and the VMM retires it.
        let removing = step(State::new(Phase::Adding), Event::Remove).unwrap();
        assert_eq!(step(removing, Event::RemoveWithdrawn).unwrap(), State::new(Phase::Adding));
        assert_eq!(
            step(removing, Event::EjectRefused).unwrap(),
            State::with(Phase::Acknowledged, Reason::EjectRefused)
        );
        assert_eq!(step(removing, Event::EjectTimedOut).unwrap(), State::with(Phase::Ejected, Reason::AddTimeout));
        // started while the removal was pending: the rollback is to running
        let r = step(step(State::new(Phase::Adding), Event::Remove).unwrap(), Event::Started).unwrap();
        assert_eq!(step(r, Event::EjectTimedOut).unwrap().phase, Phase::Running);
    }

    /// Well-formed states: only removing carries a "from", always a live phase.
    fn reachable_states() -> impl Iterator<Item = State> {
        all_states().filter(|s| {
            (s.phase == Phase::Removing) == matches!(s.from, Phase::Adding | Phase::Acknowledged | Phase::Running)
                && (s.phase == Phase::Removing || s.from == Phase::Absent)
        })
    }

    #[test]
    fn invariants_hold_for_every_state_and_event() {
        for s in reachable_states() {
            for e in EVENTS {
                let Some(t) = step(s, e) else { continue };
                // only removing carries a meaningful "from"
                if t.phase != Phase::Removing {
                    assert_eq!(t.from, Phase::Absent, "{s:?} --{e:?}--> {t:?}");
                } else {
                    assert!(matches!(t.from, Phase::Adding | Phase::Acknowledged | Phase::Running), "{s:?} {e:?}");
                }
                // a vCPU leaves the live set only through ejected
                if s.is_live() && !t.is_live() {
                    assert_eq!(t.phase, Phase::Ejected, "{s:?} --{e:?}--> {t:?}");
                }
                // only free ids are added; parked only after ejected or stuck
                if !s.is_live() && t.is_live() {
                    assert!(s.is_free() && e == Event::Add, "{s:?} --{e:?}--> {t:?}");
                }
                if t.phase == Phase::Parked {
                    assert!(matches!(s.phase, Phase::Ejected | Phase::Stuck));
                }
            }
        }
    }

    #[test]
    fn events_that_do_not_apply_change_nothing() {
        assert_eq!(step(State::new(Phase::Running), Event::Add), None);
        assert_eq!(step(State::new(Phase::Parked), Event::Ejected), None, "eject of a retired vCPU");
        assert_eq!(step(State::ABSENT, Event::Ejected), None, "eject of a vCPU never created");
        assert_eq!(step(State::new(Phase::Running), Event::EjectRefused), None);
        assert_eq!(step(State::new(Phase::Stuck), Event::Add), None, "a stuck id is never handed out");
    }

    struct Cells(Vec<AtomicU32>);
    impl StateCell for Cells {
        fn load(&self, id: u32) -> Option<u32> {
            self.0.get(id as usize).map(|c| c.load(Ordering::Acquire))
        }
        fn compare_exchange(&self, id: u32, old: u32, new: u32) -> Result<(), u32> {
            self.0[id as usize].compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
        }
    }

    #[test]
    fn apply_moves_one_id_and_ignores_what_does_not_apply() {
        let cells = Cells((0..2).map(|_| AtomicU32::new(0)).collect());
        let t = apply(&cells, 1, Event::Add).unwrap();
        assert_eq!((t.from.phase, t.to.phase), (Phase::Absent, Phase::Adding));
        assert_eq!(apply(&cells, 1, Event::Add), None);
        assert_eq!(apply(&cells, 9, Event::Add), None, "out of range");
        assert_eq!(State::decode(cells.load(0).unwrap()), State::ABSENT);
    }
}
