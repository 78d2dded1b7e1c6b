//! Memory hotplug in process: lithe's memory AML run by the interpreter
//! against the real memory hotplug controller, GED, memory map and KVM
//! memory slots, with a model guest that acknowledges, refuses, ignores and
//! ejects late (see `bed/memory.rs`); and CPU and memory resizes interleaved
//! at random. What needs Linux's own memory hotplug (onlining, migrating
//! pages) is proved in `tests/tests/guest/memory.rs`.
#![cfg(not(loom))]

mod bed;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bed::memory::{is_mapped, BOOT};
use bed::{Bed, OnAdd, OnEject, TIMEOUT};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
use vmm::memory_hotplug::layout::BLOCK;
use vmm::memory_hotplug::slots::{SlotPhase, SlotReason};
use vmm::memory_hotplug::MemoryResizeError;

const PAST_TIMEOUT: Duration = Duration::from_millis(TIMEOUT.as_millis() as u64 + 1);
const MIB: u64 = 1 << 20;

#[test]
fn the_memory_aml_adds_and_removes_through_the_real_controller() {
    let mut b = Bed::with_memory(1, 2, 4);
    b.mem().resize(BOOT + 2 * BLOCK).unwrap();
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Adding);
    assert_eq!(b.mem().size, BOOT, "offered, not yet taken: not counted");
    b.check_always();
    b.settle();
    assert_eq!(b.guest.memory.has.values().copied().collect::<Vec<_>>(), [(4 << 30, 2 * BLOCK)]);
    b.check_settled();
    assert_eq!(b.mem().size, BOOT + 256 * MIB);

    b.mem().resize(BOOT + 3 * BLOCK).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().slots.range(1), ((4 << 30) + 2 * BLOCK, BLOCK), "the next gap above the first slot");

    // Shrink: the latest slot first; each goes out of KVM and the map.
    b.mem().resize(BOOT + 2 * BLOCK).unwrap();
    assert_eq!(b.mem().slots.phase(1), SlotPhase::Removing);
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().slots.phase(1), SlotPhase::Free);
    assert_eq!(b.mem().slots.reason(1), SlotReason::None, "ejected as asked");
    b.mem().resize(BOOT).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().mapped(), [(0, BOOT)]);
    assert_eq!(b.mem().size, BOOT);
}

#[test]
fn lithes_share_is_counted() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.mem().resize(BOOT).unwrap();
    b.settle();
    let m: std::collections::BTreeMap<_, _> = b.mem().latencies.memory_snapshot().into_iter().collect();
    assert!(m["last_add_api_to_ged_ns"] > 0 && m["last_remove_api_to_ged_ns"] > 0);
    assert!(m["last_eject_to_unplugged_ns"] > 0);
    assert_eq!((m["slots_added"], m["slots_removed"], m["slots_unplugged"]), (1, 1, 1));
}

#[test]
fn bad_targets_are_refused_with_the_reachable_sizes() {
    let mut b = Bed::with_memory(1, 2, 2);
    assert!(matches!(b.mem().resize(BOOT + MIB), Err(MemoryResizeError::Unaligned { .. })));
    assert!(matches!(b.mem().resize(BOOT + 3 * BLOCK), Err(MemoryResizeError::TooLarge { .. })));
    assert!(matches!(b.mem().resize(BOOT - MIB), Err(MemoryResizeError::BelowBoot { .. })));
    b.mem().resize(BOOT + 2 * BLOCK).unwrap();
    b.settle();
    let e = b.mem().resize(BOOT + BLOCK).unwrap_err();
    assert_eq!(
        e,
        MemoryResizeError::NotReachable { desired: BOOT + BLOCK, current: BOOT + 2 * BLOCK, reachable: vec![BOOT] }
    );
    b.check_settled();
}

#[test]
fn a_refused_add_is_unplugged_and_says_why() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.guest.memory.on_add = OnAdd::Fail;
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!((b.mem().slots.phase(0), b.mem().slots.reason(0)), (SlotPhase::Free, SlotReason::AddFailed));
    assert_eq!(b.mem().mapped(), [(0, BOOT)]);
    // and the next grow works
    b.guest.memory.on_add = OnAdd::Online;
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().size, BOOT + BLOCK);
}

#[test]
fn an_add_withdrawn_before_the_guest_looked_is_cancelled() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.mem().resize(BOOT).unwrap();
    assert_eq!((b.mem().slots.phase(0), b.mem().slots.reason(0)), (SlotPhase::Free, SlotReason::AddCancelled));
    b.settle();
    b.check_settled();
    assert!(b.guest.memory.has.is_empty(), "the guest never saw it");
}

#[test]
fn memory_offered_but_never_acknowledged_is_not_counted_and_not_taken_away_blind() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.guest.memory.on_add = OnAdd::Ignore;
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Adding);
    b.check_settled();
    // Asked back, and the guest is silent: lithe cannot know whether the
    // guest uses it, so it stays offered and mapped, and is not counted.
    b.guest.ignore_interrupts = true;
    b.mem().resize(BOOT).unwrap();
    b.advance(PAST_TIMEOUT);
    let s = b.mem().slots.state(0);
    assert_eq!((s.phase, s.reason), (SlotPhase::Adding, SlotReason::EjectTimeout));
    b.check_settled();
    assert_eq!(b.mem().mapped().len(), 2);
    // A guest that answers ejects what it never added at once.
    b.guest.ignore_interrupts = false;
    b.mem().resize(BOOT).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().mapped(), [(0, BOOT)]);
}

/// A guest whose GED handling is gone never looks at an offer: after the
/// bound lithe takes it back, says why, and a wait on it ends saying so.
#[test]
fn an_offer_the_guest_never_looks_at_is_taken_back() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.guest.ignore_interrupts = true;
    let plan = b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Adding);
    b.advance(TIMEOUT / 2);
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Adding, "not before the bound");
    b.advance(PAST_TIMEOUT);
    let s = b.mem().slots.state(0);
    assert_eq!((s.phase, s.reason), (SlotPhase::Free, SlotReason::AddTimeout));
    assert_eq!(b.mem().mapped(), [(0, BOOT)], "out of the memory map (and KVM)");
    assert_eq!(
        vmm::memory_hotplug::wait::outcome(&b.mem().slots, &plan),
        Some(Err("memory slot 0: the guest did not look at the offer in time".into()))
    );
    b.check_settled();
    // An offer the guest did look at stays offered, however long it is silent.
    b.guest.ignore_interrupts = false;
    b.guest.memory.on_add = OnAdd::Ignore;
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.advance(PAST_TIMEOUT);
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Adding, "seen, unanswered: it may be in use");
    b.check_settled();
}

#[test]
fn a_refused_eject_rolls_back_truthfully() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.guest.memory.on_eject = OnEject::Refuse;
    b.mem().resize(BOOT).unwrap();
    b.settle();
    b.check_settled();
    let s = b.mem().slots.state(0);
    assert_eq!((s.phase, s.reason), (SlotPhase::Plugged, SlotReason::EjectRefused));
    assert_eq!(b.mem().size, BOOT + BLOCK, "the guest kept it: the size says so");
    assert_eq!(b.mem().controller.pending(), (0, 0), "no request left pending");
    // Nothing waits on it any more: time passing changes nothing.
    b.advance(PAST_TIMEOUT);
    assert_eq!(b.mem().slots.state(0), s);
    // The guest changes its mind; the next request goes through.
    b.guest.memory.on_eject = OnEject::Eject;
    b.mem().resize(BOOT).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().size, BOOT);
}

#[test]
fn an_ignored_eject_times_out_and_a_late_one_still_unplugs() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.guest.memory.on_eject = OnEject::Defer;
    b.mem().resize(BOOT).unwrap();
    b.settle();
    assert_eq!(b.mem().slots.phase(0), SlotPhase::Removing);
    b.check_settled();
    b.advance(PAST_TIMEOUT);
    let s = b.mem().slots.state(0);
    assert_eq!((s.phase, s.reason), (SlotPhase::Plugged, SlotReason::EjectTimeout));
    assert_eq!(b.mem().size, BOOT + BLOCK);
    b.check_settled();
    // The guest gets to it after all: lithe follows.
    b.guest_memory().eject_deferred();
    b.vmm_handles_events();
    b.check_settled();
    let s = b.mem().slots.state(0);
    assert_eq!((s.phase, s.reason), (SlotPhase::Free, SlotReason::EjectedByGuest));
    assert_eq!(b.mem().size, BOOT);
}

#[test]
fn the_guest_ejecting_on_its_own_lowers_the_size() {
    let mut b = Bed::with_memory(1, 2, 3);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    b.mem().resize(BOOT + 2 * BLOCK).unwrap();
    b.settle();
    b.guest_memory().ejects_on_its_own(0);
    b.vmm_handles_events();
    b.check_settled();
    assert_eq!(b.mem().size, BOOT + BLOCK);
    assert_eq!(b.mem().slots.reason(0), SlotReason::EjectedByGuest);
    // The gap it left is used again.
    b.mem().resize(BOOT + 2 * BLOCK).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.mem().slots.range(0), (4 << 30, BLOCK));
}

/// The grace period: a reader holding a snapshot of the memory map keeps a
/// removed slot's mapping alive, and its last reference unmaps it.
#[test]
fn a_removed_slot_stays_mapped_until_the_last_reader_lets_go() {
    let mut b = Bed::with_memory(1, 2, 2);
    b.mem().resize(BOOT + BLOCK).unwrap();
    b.settle();
    let base = GuestAddress(4 << 30);
    let snapshot = b.mem().map.memory().into_inner();
    snapshot.write_obj(0x5eed_u64, base).unwrap();
    let host = bed::memory::host_address(&snapshot, base.0);
    b.mem().resize(BOOT).unwrap();
    b.settle();
    b.check_settled();
    assert!(b.mem().map.memory().find_region(base).is_none(), "out of the published map");
    assert!(is_mapped(host, BLOCK), "still mapped while a reader holds it");
    assert_eq!(snapshot.read_obj::<u64>(base).unwrap(), 0x5eed, "and the reader still reads it");
    drop(snapshot);
    assert!(!is_mapped(host, BLOCK), "unmapped with the last reader");
}

/// Device threads read guest memory through snapshots while slots come and
/// go: a reader never faults (an unmapped page would kill the test), always
/// sees what it wrote, and when it is done no removed slot stays mapped.
#[test]
fn readers_never_touch_an_unmapped_page() {
    let mut b = Bed::with_memory(1, 2, 4);
    let map = b.mem().map.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2u64)
        .map(|n| {
            let (map, stop, reads) = (map.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut v = n << 32;
                while !stop.load(Ordering::Acquire) {
                    let m = map.memory();
                    for r in m.iter() {
                        // one word per 2 MiB, this reader's own offset
                        for off in (n * 8..r.len()).step_by(2 << 20) {
                            let at = GuestAddress(r.start_addr().0 + off);
                            v += 1;
                            m.write_obj(v, at).unwrap();
                            assert_eq!(m.read_obj::<u64>(at).unwrap(), v);
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let mut hosts = std::collections::BTreeSet::new();
    for cycle in 0..40u64 {
        let grow = BOOT + (1 + cycle % 3) * BLOCK;
        b.mem().resize(grow).unwrap();
        b.settle();
        let m = b.mem().map.memory();
        hosts.insert(bed::memory::host_address(&m, 4 << 30));
        drop(m);
        b.check_settled();
        b.mem().resize(BOOT).unwrap();
        b.settle();
        b.check_settled();
    }
    let before = reads.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + bed::memory::READER_WAIT;
    while reads.load(Ordering::Relaxed) == before && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().expect("a reader faulted or saw another's write");
    }
    assert!(reads.load(Ordering::Relaxed) > before, "the readers ran");
    for h in hosts {
        assert!(!is_mapped(h, BLOCK), "slot mapping at {h:#x} outlived every reader");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Cpus(u32),
    /// `desired_ram` = boot + n blocks.
    Ram(u64),
    OnAdd(OnAdd),
    OnEject(OnEject),
    MemOnAdd(OnAdd),
    MemOnEject(OnEject),
    IgnoreInterrupts(bool),
    Deliver,
    EjectDeferred,
    MemGuestEjects(usize),
    Advance(u64),
}

fn op(max: u32, slots: u64) -> impl Strategy<Value = Op> {
    let add = || prop_oneof![Just(OnAdd::Online), Just(OnAdd::AckOnly), Just(OnAdd::Fail), Just(OnAdd::Ignore)];
    let eject =
        || prop_oneof![Just(OnEject::Eject), Just(OnEject::Refuse), Just(OnEject::Ignore), Just(OnEject::Defer)];
    prop_oneof![
        3 => (1..=max).prop_map(Op::Cpus),
        4 => (0..=slots).prop_map(Op::Ram),
        1 => add().prop_map(Op::OnAdd),
        1 => eject().prop_map(Op::OnEject),
        1 => add().prop_map(Op::MemOnAdd),
        1 => eject().prop_map(Op::MemOnEject),
        1 => any::<bool>().prop_map(Op::IgnoreInterrupts),
        5 => Just(Op::Deliver),
        1 => Just(Op::EjectDeferred),
        1 => (0..slots as usize).prop_map(Op::MemGuestEjects),
        2 => (0..TIMEOUT.as_millis() as u64 * 2).prop_map(Op::Advance),
    ]
}

fn run(max: u32, slots: usize, ops: &[Op]) {
    let mut b = Bed::with_memory(1, max, slots);
    for op in ops {
        match op {
            Op::Cpus(n) => {
                b.resize(*n).unwrap();
            }
            Op::Ram(n) => match b.mem().resize(BOOT + n * BLOCK) {
                Ok(_) => {}
                // Some targets are not reachable from where the slots are:
                // a clear refusal, never a VMM failure.
                Err(e) => assert!(!e.is_vmm(), "{e}"),
            },
            Op::OnAdd(x) => b.guest.on_add = *x,
            Op::OnEject(x) => b.guest.on_eject = *x,
            Op::MemOnAdd(x) => b.guest.memory.on_add = *x,
            Op::MemOnEject(x) => b.guest.memory.on_eject = *x,
            Op::IgnoreInterrupts(x) => b.guest.ignore_interrupts = *x,
            Op::Deliver => {
                b.guest_handles_interrupt();
                b.vmm_handles_events();
            }
            Op::EjectDeferred => {
                b.eject_deferred();
                b.guest_memory().eject_deferred();
                b.vmm_handles_events();
            }
            Op::MemGuestEjects(i) => {
                b.guest_memory().ejects_on_its_own(*i);
                b.vmm_handles_events();
            }
            Op::Advance(ms) => b.advance(Duration::from_millis(*ms)),
        }
        b.check_always();
    }
    b.cooperate_and_settle();
    // And both still work: back to the boot RAM (always reachable) and one
    // slot more, with a vCPU change at once.
    for ram in [BOOT, BOOT + BLOCK] {
        b.mem().resize(ram).unwrap();
        b.resize(b.manager.target().desired() % max + 1).unwrap();
        b.settle();
        // Offers the guest once ignored are asked back, and it now ejects them.
        b.advance(PAST_TIMEOUT);
        b.settle();
        b.check_settled();
        let m = b.mem();
        assert_eq!(m.size, ram, "converged on {ram}: {:?}", m.states());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn cpu_and_memory_resizes_interleaved_converge_and_agree(ops in prop::collection::vec(op(3, 3), 1..40)) {
        run(3, 3, &ops);
    }
}

/// Memory offers and removals hold the main loop's tick only while the
/// guest has not answered them.
#[test]
fn memory_waits_hold_the_tick_only_until_the_guest_answers() {
    let mut b = Bed::with_memory(1, 2, 2);
    assert!(!b.mem().hotplug.needs_tick());
    b.mem().resize(BOOT + BLOCK).unwrap();
    assert!(b.mem().hotplug.needs_tick(), "an offer the guest has not looked at");
    b.settle();
    b.check_settled();
    assert!(!b.mem().hotplug.needs_tick(), "acknowledged");
    b.mem().resize(BOOT).unwrap();
    assert!(b.mem().hotplug.needs_tick(), "a removal not done yet");
    b.settle();
    b.check_settled();
    assert!(!b.mem().hotplug.needs_tick(), "ejected");
}
