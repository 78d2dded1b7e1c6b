//! The hotplug protocol in process: lithe's own DSDT AML, run by an AML
//! interpreter against the real CPU hotplug controller, GED, vCPU manager and
//! KVM vCPUs, with a model guest playing Linux (see `bed/mod.rs`). Each test
//! names the case of the hotplug-protocol issue it pins down.
#![cfg(not(loom))]

mod bed;

use std::sync::Arc;
use std::time::Duration;

use aml::{AmlContext, AmlName, AmlValue, DebugVerbosity};
use bed::{Bed, OnAdd, OnEject, TIMEOUT};
use proptest::prelude::*;
use vmm::cpu::{Phase, Reason};
use vmm::resize::{Cause, ResizeError};

const PAST_TIMEOUT: Duration = Duration::from_millis(TIMEOUT.as_millis() as u64 + 1);

#[test]
fn the_dsdt_scans_adds_and_removes_through_the_real_devices() {
    let mut b = Bed::new(1, 4);
    b.resize(3).unwrap();
    assert_eq!(b.phases()[..3], [Phase::Running, Phase::Adding, Phase::Adding]);
    b.settle();
    assert_eq!(b.guest.cpus, [0, 1, 2].into());
    b.check_settled();
    b.resize(1).unwrap();
    b.settle();
    assert_eq!(b.phases(), [Phase::Running, Phase::Parked, Phase::Parked, Phase::Absent]);
    b.check_settled();
}

/// Case 10: a parked vCPU is set up again and comes back (KVM refuses a new
/// CPUID on a vCPU that has run: the first version of the fix failed here),
/// waiting for SIPI like a fresh one: it is not "running" until the guest
/// starts it.
#[test]
fn parked_vcpus_are_reused() {
    let mut b = Bed::new(1, 3);
    for _ in 0..3 {
        b.resize(3).unwrap();
        b.settle();
        b.check_settled();
        b.resize(1).unwrap();
        b.settle();
        b.check_settled();
    }
    assert_eq!(b.phases(), [Phase::Running, Phase::Parked, Phase::Parked]);
    b.guest.on_add = OnAdd::AckOnly;
    b.resize(2).unwrap();
    b.settle();
    for _ in 0..20 {
        b.advance(Duration::from_millis(250)); // ticks kick unstarted vCPUs to look
        std::thread::sleep(Duration::from_millis(5));
        b.vmm_handles_events();
    }
    assert_eq!(b.state(1).phase, Phase::Acknowledged, "a reused vCPU the guest has not started");
    b.guest_onlines_all();
    assert_eq!(b.state(1).phase, Phase::Running);
}

/// A guest that stops answering gets looked at: the probe behind the
/// eject-timeout log line reads the vCPU's MP state and rip from its thread.
/// The model guest's APs halt at offset 5 of their SIPI page (`AP_CODE`).
#[test]
fn a_probe_finds_a_started_ap_halted_where_its_code_halts() {
    let mut b = Bed::new(1, 2);
    b.resize(2).unwrap();
    b.settle();
    b.check_settled();
    let mut reader = vmm::cpu::table::Reader::new(&b.table, "probe test");
    let mut seen = None;
    for _ in 0..100 {
        seen = reader.read().with_value(1, |h| h.whereabouts(Duration::from_secs(1))).flatten();
        if seen.is_some_and(|w| w.mp_state == kvm_bindings::KVM_MP_STATE_HALTED) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let w = seen.expect("vCPU 1 answers a probe");
    assert_eq!(w.mp_state, kvm_bindings::KVM_MP_STATE_HALTED, "{w}");
    assert_eq!(w.rip, 5, "{w}");
    assert!(w.to_string().starts_with("halted (3) at rip 0x5"), "{w}");
}

/// A vCPU thread whose seccomp filter does not install never runs the
/// guest, says so through `Ready`, and hands its KVM vCPU back on stop.
#[test]
fn a_vcpu_thread_whose_filter_fails_runs_nothing_and_returns_its_fd() {
    let b = Bed::new(1, 2);
    let fd = b.vm.create_vcpu(1).unwrap();
    let exit = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let ctx = vmm::cpu::vcpu::VcpuContext {
        pio: Arc::new(devices::Bus::new()),
        mmio: Arc::new(devices::Bus::new()),
        exit: Arc::new(vmm::exit::ExitNotifier::new(exit)),
        // An empty program: seccompiler refuses to install it.
        seccomp: Some(Arc::new(vmm::seccomp::Filter::from_program("broken", Vec::new()))),
        on_started: None,
        ioapic: None,
    };
    let (handle, ready) = vmm::cpu::vcpu::VcpuHandle::spawn(1, fd, ctx, false, false).unwrap();
    let err = ready.wait().unwrap_err();
    assert!(err.to_string().contains("vCPU 1") && err.to_string().contains("broken"), "{err}");
    assert_eq!(handle.control.exits.load(std::sync::atomic::Ordering::Relaxed), 0, "it never ran");
    let fd = handle.stop(Duration::from_secs(1)).map_err(|e| e.error).expect("the fd comes back");
    drop(fd);
}

/// Case 1 and 2, the other way round: the guest takes the hot-add, never
/// answers it, and then ignores the eject request too. The VMM has no sign
/// the guest ever had the CPU: it retires it rather than keep it in limbo.
#[test]
fn an_add_the_guest_takes_and_ignores_and_an_ignored_eject_after_it() {
    let mut b = Bed::new(1, 2);
    b.guest.on_add = OnAdd::Ignore;
    b.resize(2).unwrap();
    b.settle();
    assert_eq!(b.state(1).phase, Phase::Adding);
    b.guest.ignore_interrupts = true;
    b.advance(PAST_TIMEOUT);
    assert_eq!(b.state(1).phase, Phase::Removing);
    b.advance(PAST_TIMEOUT);
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Parked, Reason::AddTimeout));
    assert_eq!(b.manager.target().desired(), 1);
    b.guest.ignore_interrupts = false;
    b.settle();
    b.check_settled();
}

/// Case 1: an add taken back before the guest scanned is retired, never
/// reported online, and the next removal does not roll back.
#[test]
fn add_then_remove_before_the_guest_scans() {
    let mut b = Bed::new(1, 2);
    b.guest.ignore_interrupts = true;
    b.resize(2).unwrap();
    let plan = b.resize(1).unwrap();
    assert!(plan.removing.contains(&1));
    let s = b.state(1);
    assert_eq!((s.phase, s.reason), (Phase::Parked, Reason::AddCancelled));
    b.advance(PAST_TIMEOUT * 2);
    b.guest.ignore_interrupts = false;
    b.settle();
    b.check_settled();
    assert_eq!(b.manager.target().desired(), 1);
    // the id works normally afterwards
    b.resize(2).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.phases(), [Phase::Running, Phase::Running]);
}

/// Case 2: a hot-add the guest fails, or never takes, is bounded and said.
#[test]
fn failed_and_unanswered_adds_are_retired_and_the_target_follows() {
    let mut b = Bed::new(1, 3);
    b.guest.on_add = OnAdd::Fail;
    b.resize(2).unwrap();
    b.settle();
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Parked, Reason::AddFailed));
    let t = b.manager.target().status();
    assert_eq!((t.desired, &t.cause), (1, &Cause::Rollback { vcpu: 1, reason: Reason::AddFailed }));
    b.check_settled();

    // Never taken (GED unbound): withdrawn at the deadline.
    b.guest.on_add = OnAdd::Online;
    b.guest.ignore_interrupts = true;
    b.resize(2).unwrap();
    b.advance(PAST_TIMEOUT);
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Parked, Reason::AddTimeout));
    assert_eq!(b.manager.target().desired(), 1);
    b.guest.ignore_interrupts = false;
    b.settle();
    b.check_settled();

    // Taken but never answered: the guest is asked to eject it; Linux ejects
    // a CPU it never added at once.
    b.guest.on_add = OnAdd::Ignore;
    b.resize(2).unwrap();
    b.settle();
    assert_eq!(b.state(1).phase, Phase::Adding);
    b.advance(PAST_TIMEOUT);
    assert_eq!(b.state(1).phase, Phase::Removing);
    b.settle();
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Parked, Reason::AddTimeout));
    b.check_settled();
}

/// Case 3: a late `_EJ0` after the eject timed out still retires the vCPU.
#[test]
fn a_late_eject_after_the_timeout_retires() {
    let mut b = Bed::new(2, 2);
    b.guest.on_eject = OnEject::Defer;
    b.resize(1).unwrap();
    b.settle();
    b.advance(PAST_TIMEOUT);
    let s = b.state(1);
    assert_eq!((s.phase, s.reason), (Phase::Running, Reason::EjectTimeout));
    assert_eq!(b.manager.target().desired(), 2, "the target follows what the guest kept");
    b.eject_deferred();
    b.vmm_handles_events();
    assert_eq!(b.state(1).phase, Phase::Parked);
    assert_eq!(b.manager.target().desired(), 1);
    b.check_settled();
}

/// Case 4: an eject the guest does on its own is honoured.
#[test]
fn a_guest_initiated_eject_retires_and_lowers_the_target() {
    let mut b = Bed::new(3, 3);
    b.guest_ejects_on_its_own(1);
    b.vmm_handles_events();
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Parked, Reason::EjectedByGuest));
    assert_eq!(b.manager.target().desired(), 2);
    b.check_settled();
    // and the next resize up re-adds it
    b.resize(3).unwrap();
    b.settle();
    b.check_settled();
}

/// A refusal rolls back to where the vCPU was, and the target follows.
#[test]
fn a_refused_eject_rolls_back() {
    let mut b = Bed::new(1, 3);
    b.resize(3).unwrap();
    b.settle();
    b.guest.on_eject = OnEject::Refuse;
    b.resize(1).unwrap();
    b.settle();
    for id in [1, 2] {
        assert_eq!((b.state(id).phase, b.state(id).reason), (Phase::Running, Reason::EjectRefused));
    }
    assert_eq!(b.manager.target().desired(), 3);
    b.check_settled();
    // asking again retries
    b.guest.on_eject = OnEject::Eject;
    b.resize(1).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.live(), [0].into());
}

/// Case 8: a vCPU KVM refuses to create part-way through a resize: the ones
/// already started are kept and announced to the guest, the target counts
/// what exists, and the reply names the failure.
#[test]
fn an_add_that_fails_part_way_keeps_and_announces_the_rest() {
    let mut b = Bed::new(1, 4);
    let _squatter = b.vm.create_vcpu(2).unwrap(); // KVM now refuses id 2 to the manager
    let e = b.resize(4).unwrap_err();
    assert!(matches!(&e, ResizeError::VcpuFailed { vcpu: 2, target: 2, .. }), "{e:?}");
    assert!(e.is_vmm(), "a 500, not the client's fault");
    assert_eq!(b.state(1).phase, Phase::Adding, "vCPU 1 went through before vCPU 2 failed");
    let t = b.manager.target().status();
    assert_eq!(t.desired, 2);
    assert!(matches!(t.cause, Cause::VmmError { vcpu: 2, .. }), "{t:?}");
    b.settle();
    b.check_settled();
    assert_eq!(b.guest.cpus, [0, 1].into(), "the guest was told about vCPU 1");
}

/// Case 9: a vCPU thread that does not stop when retired is kept (never
/// detached), reported `stuck`, and its id is not handed out until the
/// thread has stopped; then it is parked and reused as usual.
#[test]
fn a_thread_that_does_not_stop_is_stuck_not_lost() {
    // A short stop limit: the one thread asked to stop here is meant not to.
    let mut b = Bed::with_stop_limit(1, 3, Duration::from_millis(300));
    b.blocker.hold(); // the next AP to start blocks in a port read
    b.resize(2).unwrap();
    b.settle();
    b.blocker.wait_blocked(1);
    b.resize(1).unwrap();
    b.settle(); // the guest ejects it; the thread cannot stop
    assert_eq!(b.state(1).phase, Phase::Stuck);
    assert_eq!(bed::Bed::vcpu_threads(), [0, 1].into(), "the thread is still there, and still owned");
    let plan = b.resize(3).unwrap();
    assert_eq!(plan.added, vec![2], "a stuck id is not handed out: {plan:?}");
    assert_eq!(plan.waiting_for, vec![1], "{plan:?}");
    b.settle();
    b.blocker.release();
    // A later tick joins it once the thread has come out of the port, and
    // re-plans at once: the target was waiting for that id.
    for _ in 0..1000 {
        b.advance(Duration::from_millis(1));
        if b.state(1).phase != Phase::Stuck {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(b.state(1).phase, Phase::Adding, "joined, parked and re-added in one tick");
    b.settle();
    b.check_settled();
    assert_eq!(b.live(), [0, 1, 2].into(), "id 1 came back once free");
}

/// Case 7: if one vCPU cannot pause, the ones already paused resume and the
/// VM is not left half paused.
#[test]
fn a_failed_pause_leaves_every_vcpu_running() {
    // vCPU 2 is meant not to pause; the others get a second, plenty to pause.
    let mut b = Bed::with_stop_limit(1, 4, Duration::from_secs(1));
    b.resize(2).unwrap();
    b.settle();
    b.blocker.hold();
    b.resize(3).unwrap();
    b.settle();
    b.blocker.wait_blocked(1); // vCPU 2 is in a port read: it cannot pause
    assert!(b.manager.pause().is_err());
    assert!(!b.manager.is_paused());
    b.blocker.release();
    // vCPU 0 runs again: it starts the next CPU the guest brings up.
    b.resize(4).unwrap();
    b.settle();
    assert_eq!(b.state(3).phase, Phase::Running);
    b.manager.pause().unwrap();
    b.manager.resume();
    b.vmm_handles_events();
    b.settle();
    b.check_settled();
}

/// Case 7: deadlines do not run while the VM is paused.
#[test]
fn deadlines_stop_while_paused() {
    let mut b = Bed::new(2, 2);
    b.guest.on_eject = OnEject::Ignore;
    b.resize(1).unwrap();
    b.settle();
    b.advance(TIMEOUT / 2);
    b.manager.pause().unwrap();
    assert!(b.resize(2).is_err(), "no resize while paused");
    b.advance(TIMEOUT * 3);
    assert_eq!(b.state(1).phase, Phase::Removing);
    b.manager.resume();
    b.advance(TIMEOUT / 4);
    assert_eq!(b.state(1).phase, Phase::Removing, "the paused time did not count");
    b.advance(TIMEOUT / 2);
    assert_eq!((b.state(1).phase, b.state(1).reason), (Phase::Running, Reason::EjectTimeout));
    b.check_settled();
}

/// Case 11: acknowledged is not running.
#[test]
fn a_guest_that_acknowledges_but_never_starts_the_cpu() {
    let mut b = Bed::new(1, 2);
    b.guest.on_add = OnAdd::AckOnly;
    b.resize(2).unwrap();
    b.settle();
    assert_eq!(b.state(1).phase, Phase::Acknowledged);
    let states = b.table.states();
    assert!(!vmm::cpu::reconciler::converged(2, &states));
    // removing it works like any other
    b.resize(1).unwrap();
    b.settle();
    assert_eq!(b.state(1).phase, Phase::Parked);
}

/// Case 12: a resize up while removals are pending converges, no 409.
#[test]
fn retarget_while_removals_are_pending() {
    let mut b = Bed::new(1, 4);
    b.resize(4).unwrap();
    b.settle();
    b.guest.on_eject = OnEject::Defer;
    b.resize(1).unwrap();
    b.settle();
    let plan = b.resize(3).unwrap();
    assert_eq!(plan.waiting_for.len(), 2, "{plan:?}");
    b.eject_deferred();
    b.settle();
    b.check_settled();
    assert_eq!(b.live().len(), 3);
    // Taken back before the guest saw them: no eject at all.
    b.guest.ignore_interrupts = true;
    b.resize(1).unwrap();
    let plan = b.resize(3).unwrap();
    assert!(plan.added.is_empty(), "{plan:?}");
    b.guest.ignore_interrupts = false;
    b.settle();
    b.check_settled();
    assert_eq!(b.live().len(), 3);
}

/// The same count again changes nothing.
#[test]
fn the_same_resize_twice_is_one_change() {
    let mut b = Bed::new(1, 3);
    let first = b.resize(2).unwrap();
    let second = b.resize(2).unwrap();
    assert_eq!(first.seq, second.seq);
    assert!(second.added.is_empty());
    b.settle();
    b.check_settled();
}

/// The `CTFY` dispatch tree reaches exactly vCPU `id` for every id (the bed
/// replaces `CTFY`, as the interpreter has no `Notify`; this runs the real
/// tree with a recording leaf).
#[test]
fn ctfy_dispatches_every_id() {
    use acpi_tables::aml::{Path, Store};
    use vmm::acpi::cpu_aml::{bytes, ctfy_with};
    for max in [1, 2, 5, 32, 33, 254] {
        let method = ctfy_with(max, &|id| bytes(&Store::new(&Path::new("\\HIT_"), &(id as usize + 1000))));
        let mut ctx = AmlContext::new(bed::no_hardware(), DebugVerbosity::None);
        ctx.namespace.add_value(AmlName::from_str("\\HIT_").unwrap(), AmlValue::Integer(0)).unwrap();
        ctx.parse_table(&method.0).unwrap();
        for id in 0..max {
            let args = aml::value::Args::from_list(vec![AmlValue::Integer(id.into()), AmlValue::Integer(1)]).unwrap();
            ctx.invoke_method(&AmlName::from_str("\\CTFY").unwrap(), args).unwrap();
            let hit = ctx.namespace.get_by_path(&AmlName::from_str("\\HIT_").unwrap()).unwrap().as_integer(&ctx);
            assert_eq!(hit.unwrap(), u64::from(id) + 1000, "max {max}, id {id}");
        }
    }
}

/// A hot-add of one vCPU costs the same MMIO accesses at any `max`, but for
/// two more reads (insert and remove words) per 32 possible vCPUs.
#[test]
fn a_scan_costs_words_not_possible_vcpus() {
    let cost = |max: u32| {
        let mut b = Bed::new(1, max);
        b.resize(2).unwrap();
        let before = b.mmio_accesses();
        b.settle();
        b.mmio_accesses() - before
    };
    let base = cost(4);
    eprintln!("MMIO accesses for one hot-add, max 4: {base}");
    for max in [33u32, 64, 254] {
        let words = u64::from(max.div_ceil(32));
        assert_eq!(cost(max), base + 2 * (words - 1), "max {max}");
    }
}

/// A targeted resize adds and removes exactly the named vCPUs through the
/// DSDT, leaves the others alone, and a count-only resize after it keeps
/// the ids the guest has.
#[test]
fn a_targeted_resize_adds_and_removes_the_named_vcpus() {
    let mut b = Bed::new(2, 40);
    let plan = b.resize_ids(&[0, 1, 33, 39]).unwrap();
    assert_eq!(plan.added, vec![33, 39]);
    b.settle();
    b.check_settled();
    assert_eq!(b.guest.cpus, [0, 1, 33, 39].into());
    assert_eq!(b.manager.target().status().vcpu_ids, Some(vec![0, 1, 33, 39]));
    // Empty one "socket" (1 and 33) and keep 39.
    let plan = b.resize_ids(&[39, 0]).unwrap();
    assert_eq!(plan.removing, vec![33, 1]);
    b.settle();
    b.check_settled();
    assert_eq!(b.guest.cpus, [0, 39].into());
    // Without ids again: the count is kept, the ids too; more means the lowest free.
    b.resize(3).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.guest.cpus, [0, 1, 39].into());
    assert_eq!(b.manager.target().status().vcpu_ids, None);
    // Bad sets are refused and change nothing.
    for bad in [&[1u32, 2][..], &[0, 40], &[]] {
        assert!(b.resize_ids(bad).is_err(), "{bad:?}");
    }
    assert_eq!(b.manager.target().desired(), 3);
    // A guest that refuses an eject: the target follows, as the ids it has.
    b.guest.on_eject = OnEject::Refuse;
    b.resize_ids(&[0, 1]).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.manager.target().status().vcpu_ids, Some(vec![0, 1, 39]));
}

#[derive(Debug, Clone)]
enum Op {
    Resize(u32),
    /// A targeted resize: bit i of the mask names vCPU i (vCPU 0 always in).
    ResizeIds(u32),
    OnAdd(OnAdd),
    OnEject(OnEject),
    IgnoreInterrupts(bool),
    Deliver,
    EjectDeferred,
    GuestEjects(u32),
    Advance(u64),
    PauseResume,
}

fn op(max: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=max).prop_map(Op::Resize),
        2 => (0..1u32 << max).prop_map(Op::ResizeIds),
        1 => prop_oneof![Just(OnAdd::Online), Just(OnAdd::AckOnly), Just(OnAdd::Fail), Just(OnAdd::Ignore)].prop_map(Op::OnAdd),
        1 => prop_oneof![Just(OnEject::Eject), Just(OnEject::Refuse), Just(OnEject::Ignore), Just(OnEject::Defer)]
            .prop_map(Op::OnEject),
        1 => any::<bool>().prop_map(Op::IgnoreInterrupts),
        4 => Just(Op::Deliver),
        1 => Just(Op::EjectDeferred),
        1 => (1..max).prop_map(Op::GuestEjects),
        2 => (0..TIMEOUT.as_millis() as u64 * 2).prop_map(Op::Advance),
        1 => Just(Op::PauseResume),
    ]
}

fn run(max: u32, ops: &[Op]) {
    let mut b = Bed::new(1, max);
    for op in ops {
        match op {
            Op::Resize(n) => {
                b.resize(*n).unwrap();
            }
            Op::ResizeIds(mask) => {
                let ids: Vec<u32> = (0..max).filter(|&i| i == 0 || mask & (1 << i) != 0).collect();
                b.resize_ids(&ids).unwrap();
            }
            Op::OnAdd(x) => b.guest.on_add = *x,
            Op::OnEject(x) => b.guest.on_eject = *x,
            Op::IgnoreInterrupts(x) => b.guest.ignore_interrupts = *x,
            Op::Deliver => {
                b.guest_handles_interrupt();
                b.vmm_handles_events();
            }
            Op::EjectDeferred => {
                b.eject_deferred();
                b.vmm_handles_events();
            }
            Op::GuestEjects(id) => {
                b.guest_ejects_on_its_own(*id);
                b.vmm_handles_events();
            }
            Op::Advance(ms) => b.advance(Duration::from_millis(*ms)),
            Op::PauseResume => {
                b.manager.pause().unwrap();
                b.advance(TIMEOUT);
                b.manager.resume();
            }
        }
        b.check_always();
    }
    b.cooperate_and_settle();
    assert!(b.guest.started == b.guest.cpus);
    // and the VMM still works: a final resize converges.
    let last = b.manager.target().desired() % max + 1;
    b.resize(last).unwrap();
    b.settle();
    b.check_settled();
    assert_eq!(b.live().len() as u32, last);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_converge_and_agree(ops in prop::collection::vec(op(5), 1..40)) {
        run(5, &ops);
    }
}

/// Add/remove cycles leave no fd, thread or memory behind. 300 cycles here;
/// `scripts/soak.sh` runs 10,000 (`LITHE_SOAK_CYCLES`) and prints the numbers.
#[test]
fn soak_add_remove_cycles() {
    let cycles: u32 = std::env::var("LITHE_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let mut b = Bed::new(1, 4);
    let sample = || (open_fds(), Bed::vcpu_threads().len(), rss_kib());
    // warm up: every id created once (KVM vCPU fds are parked, not closed)
    b.resize(4).unwrap();
    b.settle();
    b.resize(1).unwrap();
    b.settle();
    let (fds0, threads0, rss0) = sample();
    let start = std::time::Instant::now();
    for i in 0..cycles {
        b.resize(2 + i % 3).unwrap();
        b.settle();
        b.resize(1).unwrap();
        b.settle();
    }
    let elapsed = start.elapsed();
    let (fds1, threads1, rss1) = sample();
    eprintln!(
        "soak: {cycles} cycles in {elapsed:?} ({:?}/cycle); fds {fds0} -> {fds1}; vcpu threads {threads0} -> {threads1}; RSS {rss0} -> {rss1} KiB",
        elapsed / cycles.max(1)
    );
    b.check_settled();
    assert_eq!(fds1, fds0, "fds leaked");
    assert_eq!(threads1, threads0, "threads leaked");
    assert!(rss1 <= rss0 + 4096, "RSS grew from {rss0} to {rss1} KiB");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// lithe's main loop arms its tick only while something waits on time, so
/// an idle VM does not wake it (the bed's `advance` checks that a skipped
/// tick would have changed nothing). An add the guest has not answered
/// has a deadline; a vCPU the guest acknowledged but has not started is
/// kicked until it is; a converged VM needs nothing.
#[test]
fn the_tick_sleeps_once_nothing_waits_on_time() {
    let mut b = Bed::new(1, 3);
    assert!(!b.manager.needs_tick(), "a booted VM at its target");
    b.resize(2).unwrap();
    assert!(b.manager.needs_tick(), "an add the guest has not answered");
    b.settle();
    b.check_settled();
    assert!(!b.manager.needs_tick(), "the guest onlined it");

    b.guest.on_add = OnAdd::AckOnly;
    b.resize(3).unwrap();
    b.settle();
    assert_eq!(b.state(2).phase, Phase::Acknowledged);
    assert!(b.manager.needs_tick(), "acknowledged, not started: kicked until it is");
    b.guest_onlines_all();
    assert_eq!(b.state(2).phase, Phase::Running);
    assert!(!b.manager.needs_tick());

    b.guest.on_eject = OnEject::Ignore;
    b.resize(2).unwrap();
    b.settle();
    assert!(b.manager.needs_tick(), "an eject the guest has not done");
    b.advance(PAST_TIMEOUT);
    assert_eq!(b.state(2).phase, Phase::Running, "rolled back");
    assert!(!b.manager.needs_tick(), "nothing left to wait for");
}
