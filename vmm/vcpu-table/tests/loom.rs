//! Loom models of the vCPU table's ordering. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p vcpu-table --release --test loom`.
//!
//! Properties: a reader that sees a bit sees a fully initialised slot; a slot
//! is never torn down while a reader that saw its bit is inside its section.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use vcpu_table::{FenceMode, Reader, VcpuTable};

const ALIVE: usize = 0xA11CE;
const DEAD: usize = 0xDEAD;

struct Payload {
    canary: AtomicUsize,
    data: usize,
}

fn payload(data: usize) -> Arc<Payload> {
    Arc::new(Payload { canary: AtomicUsize::new(ALIVE), data })
}

/// A reader that sees the bit also sees the payload's contents.
#[test]
fn publish_is_never_seen_half_initialised() {
    loom::model(|| {
        let table = Arc::new(VcpuTable::<Arc<Payload>>::with_fence_mode(2, FenceMode::SeqCst));
        let reader = {
            let table = table.clone();
            thread::spawn(move || {
                let mut r = Reader::new(&table, "r");
                let g = r.read();
                let seen = g.with_value(1, |p| (p.canary.load(Ordering::Relaxed), p.data));
                if let Some(data) = seen {
                    assert_eq!(data, (ALIVE, 7));
                }
                seen.is_some()
            })
        };
        table.publish(1, payload(7)).unwrap();
        reader.join().unwrap();
    });
}

/// Retire never hands back (and so never tears down) a payload a reader is using.
#[test]
fn retire_waits_for_readers_that_saw_the_bit() {
    loom::model(|| {
        let table = Arc::new(VcpuTable::with_fence_mode(1, FenceMode::SeqCst));
        table.publish(0, payload(1)).unwrap();
        let reader = {
            let table = table.clone();
            thread::spawn(move || {
                let mut r = Reader::new(&table, "r");
                let g = r.read();
                g.with_value(0, |p| {
                    assert_eq!(p.canary.load(Ordering::Relaxed), ALIVE, "reader saw a torn-down slot");
                });
            })
        };
        let p = table.retire(0, Duration::from_secs(1)).unwrap();
        p.canary.store(DEAD, Ordering::Relaxed);
        reader.join().unwrap();
    });
}

/// Retire then re-publish of the same id while a reader walks the table: the
/// reader sees either the old or the new payload, each alive, never a mix.
#[test]
fn retire_and_republish_against_an_iterating_reader() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let table = Arc::new(VcpuTable::with_fence_mode(2, FenceMode::SeqCst));
        table.publish(0, payload(10)).unwrap();
        let reader = {
            let table = table.clone();
            thread::spawn(move || {
                let mut r = Reader::new(&table, "r");
                let g = r.read();
                for id in 0..2 {
                    g.with_value(id, |p| {
                        assert_eq!(p.canary.load(Ordering::Relaxed), ALIVE);
                        assert!(p.data == 10 || p.data == 11);
                    });
                }
            })
        };
        let old = table.retire(0, Duration::from_secs(1)).unwrap();
        old.canary.store(DEAD, Ordering::Relaxed);
        table.publish(0, payload(11)).unwrap();
        reader.join().unwrap();
    });
}

/// A reader that leaves a section and immediately enters the next: a writer
/// that sees the new section's epoch must still be ordered after the old
/// section's accesses (found by Miri before this model existed).
#[test]
fn back_to_back_sections_do_not_hide_the_first_from_the_grace_period() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let table = Arc::new(VcpuTable::with_fence_mode(1, FenceMode::SeqCst));
        table.publish(0, payload(1)).unwrap();
        let reader = {
            let table = table.clone();
            thread::spawn(move || {
                let mut r = Reader::new(&table, "r");
                for _ in 0..2 {
                    let g = r.read();
                    g.with_value(0, |p| assert_eq!(p.canary.load(Ordering::Relaxed), ALIVE));
                }
            })
        };
        let p = table.retire(0, Duration::from_secs(1)).unwrap();
        p.canary.store(DEAD, Ordering::Relaxed);
        reader.join().unwrap();
    });
}

/// The iterator's two paths against a retire and re-publish: `fold` walks the
/// run of ids 0–1 as dense slots, `next` bit by bit. Either way every payload
/// a reader reaches is alive and initialised.
#[test]
fn iterators_against_retire_and_republish() {
    for by_fold in [true, false] {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            let table = Arc::new(VcpuTable::with_fence_mode(2, FenceMode::SeqCst));
            table.publish(0, payload(0)).unwrap();
            table.publish(1, payload(10)).unwrap();
            let reader = {
                let table = table.clone();
                thread::spawn(move || {
                    let mut r = Reader::new(&table, "r");
                    let g = r.read();
                    let check = |(id, p): (u32, &Arc<Payload>)| {
                        assert_eq!(p.canary.load(Ordering::Relaxed), ALIVE, "vCPU {id} torn down under a reader");
                        assert!(p.data == id as usize * 10 || p.data == 11);
                    };
                    if by_fold {
                        g.iter().for_each(check);
                    } else {
                        for e in g.iter() {
                            check(e);
                        }
                    }
                })
            };
            let old = table.retire(1, Duration::from_secs(1)).unwrap();
            old.canary.store(DEAD, Ordering::Relaxed);
            table.publish(1, payload(11)).unwrap();
            reader.join().unwrap();
        });
    }
}

/// The shared state machine's `apply`, raced: the guest's `_EJ0` (a vCPU
/// thread) against the main loop's eject timeout on the same id. Exactly one
/// wins, and the end state is what one of the two orders gives, never a mix.
#[test]
fn apply_races_end_in_one_of_the_sequential_outcomes() {
    use vcpu_table::lifecycle::{step, Event, Phase, State, Vcpu};
    use vcpu_table::machine::{apply, Cells, StateCell};
    loom::model(|| {
        let cells = Arc::new(Cells::new(1));
        let removing = step(step(State::ABSENT, Event::Add).unwrap(), Event::AddAcked)
            .and_then(|s| step(s, Event::Started))
            .and_then(|s| step(s, Event::Remove))
            .unwrap();
        let word = cells.load(0).unwrap();
        cells.compare_exchange(0, word, removing.encode()).unwrap();
        let guest = {
            let cells = cells.clone();
            thread::spawn(move || apply::<Vcpu>(&*cells, 0, Event::Ejected).is_some())
        };
        let timed_out = apply::<Vcpu>(&*cells, 0, Event::EjectTimedOut).is_some();
        let ejected = guest.join().unwrap();
        let end = State::decode(cells.load(0).unwrap());
        let eject_first = step(removing, Event::Ejected).unwrap();
        let timeout_first = step(removing, Event::EjectTimedOut).unwrap();
        // Ejected then a timeout (no-op); or the timeout, then the guest's
        // late eject (ejected_by_guest).
        let late_eject = step(timeout_first, Event::Ejected).unwrap();
        assert!(end == eject_first || end == late_eject, "{end:?}");
        assert!(ejected, "the guest's eject applies in either order");
        assert_eq!(timed_out, end == late_eject);
        assert_eq!(end.phase, Phase::Ejected);
    });
}
