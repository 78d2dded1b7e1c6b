//! The vCPU manager: carries the resize's plan out on KVM vCPUs and their
//! threads. It writes the vCPU table from the main loop; the only other
//! writer is [`HotplugHost`], which applies the guest's answers from vCPU
//! threads (lock-free, per vCPU state word) and wakes the main loop.
//!
//! Resize, top to bottom: [`crate::resize::start`] sets the target →
//! [`reconcile`](VcpuManager::reconcile) asks the [`reconciler`] what to do →
//! each step is a [`lifecycle`] event → the CPU hotplug controller's pending
//! bitmaps and the GED interrupt tell the guest → the guest's `_OST`/`_EJ0`
//! come back through [`HotplugHost`] as lifecycle events, and the main loop
//! calls [`on_guest_events`](VcpuManager::on_guest_events), which retires
//! ejected vCPUs (bit cleared → grace period → thread joined → fd parked)
//! and re-plans. A rollback (refused or timed-out eject, failed or
//! unanswered add, an eject the guest did on its own) moves the target to
//! what the guest really has, so the VMM never reports a count it does not run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use log::{error, info, warn};

use devices::cpu_hotplug::CpuHotplugController;
use devices::ged::{Ged, GED_EVENT_CPU_HOTPLUG};
use devices::EventFdTrigger;

use super::clock::Clock;
use super::hotplug_host::HotplugHost;
use super::lifecycle::{Event, Phase, Reason, State, Transition};
use super::reconciler;
use super::table::{Reader, TableError, VcpuTable};
use super::vcpu::{Ready, StopFailed, VcpuContext, VcpuError, VcpuHandle};
use crate::arch::topology::Topology;
use crate::arch::{cpuid, regs, x2apic};
use crate::counters::Latencies;
use crate::resize::target::{Cause, Target, TargetStatus};

/// How long `retire` waits for readers to leave their sections.
const GRACE_PERIOD_LIMIT: Duration = Duration::from_secs(5);
/// How long a vCPU thread gets to stop or pause after being kicked.
pub const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long a probe of a vCPU's whereabouts may take (a read-side section
/// of the vCPU table is open meanwhile, so keep it short).
const PROBE_LIMIT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("creating KVM vCPU {id}: {source}")]
    CreateVcpu { id: u32, source: kvm_ioctls::Error },
    #[error("configuring vCPU {id}: {source}")]
    Configure { id: u32, source: regs::RegsError },
    #[error("setting CPUID of vCPU {id}: {source}")]
    Cpuid { id: u32, source: kvm_ioctls::Error },
    #[error("resetting parked vCPU {id} for reuse: {source}")]
    Reset { id: u32, source: kvm_ioctls::Error },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// What one reconcile step set in motion.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResizePlan {
    /// The target this step works towards.
    pub seq: u64,
    pub added: Vec<u32>,
    pub removing: Vec<u32>,
    /// vCPUs still being ejected that the count needs once they are free.
    pub waiting_for: Vec<u32>,
    /// A vCPU that could not be created or started, and why (the target
    /// now counts only what exists).
    pub error: Option<(u32, String)>,
}

/// Everything the manager is built from.
pub struct ManagerParts {
    pub vm: Arc<VmFd>,
    pub table: Arc<VcpuTable<VcpuHandle>>,
    pub host: Arc<HotplugHost>,
    pub controller: Arc<CpuHotplugController>,
    pub ged: Arc<Ged<EventFdTrigger>>,
    pub ctx: VcpuContext,
    pub supported_cpuid: CpuId,
    /// Where each vCPU id sits, hence its APIC id (its KVM vCPU id).
    pub topology: Topology,
    /// How long the guest gets to take or answer a hot-add, or to eject.
    pub hotplug_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    /// How long a vCPU thread gets to stop or pause ([`STOP_LIMIT`]).
    pub stop_limit: Duration,
    /// Where the VMM-side latencies of adds and removes go.
    pub latencies: Arc<Latencies>,
}

pub struct VcpuManager {
    vm: Arc<VmFd>,
    table: Arc<VcpuTable<VcpuHandle>>,
    reader: Reader<VcpuHandle>,
    host: Arc<HotplugHost>,
    controller: Arc<CpuHotplugController>,
    ged: Arc<Ged<EventFdTrigger>>,
    ctx: VcpuContext,
    supported_cpuid: CpuId,
    topology: Topology,
    max_vcpus: u32,
    target: Arc<Target>,
    /// KVM vCPU fds of retired vCPUs, by id: KVM cannot destroy them.
    parked: Vec<Option<VcpuFd>>,
    /// When the guest's answer to a pending add or removal is overdue.
    deadlines: Vec<Option<Instant>>,
    /// Ejected vCPUs whose grace period has not completed yet.
    retire_retry: Vec<u32>,
    /// Threads that did not stop when asked; joined when they do.
    stuck: Vec<(u32, VcpuHandle)>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    stop_limit: Duration,
    paused_at: Option<Instant>,
    latencies: Arc<Latencies>,
    /// When the GED interrupt was last raised: the end of a resize's
    /// VMM-side share (wall clock, unlike `clock`, which tests drive).
    notified_at: std::cell::Cell<Option<Instant>>,
}

impl VcpuManager {
    pub fn new(p: ManagerParts) -> Self {
        let max = p.table.capacity();
        VcpuManager {
            reader: Reader::new(&p.table, "vcpu-manager"),
            vm: p.vm,
            table: p.table,
            host: p.host,
            controller: p.controller,
            ged: p.ged,
            ctx: p.ctx,
            supported_cpuid: p.supported_cpuid,
            topology: p.topology,
            max_vcpus: max,
            target: Arc::new(Target::new(0)),
            parked: (0..max).map(|_| None).collect(),
            deadlines: vec![None; max as usize],
            retire_retry: Vec::new(),
            stuck: Vec::new(),
            timeout: p.hotplug_timeout,
            clock: p.clock,
            stop_limit: p.stop_limit,
            paused_at: None,
            latencies: p.latencies,
            notified_at: std::cell::Cell::new(None),
        }
    }

    /// The target, for the resize owner and the API's lock-free reads.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus
    }

    /// Creates and starts vCPUs `0..boot`; vCPU 0 starts at `entry` in long mode.
    pub fn start_boot_vcpus(&mut self, boot: u32, entry: u64) -> Result<(), ManagerError> {
        for id in 0..boot {
            let fd = self.create_vcpu(id)?;
            if id == 0 {
                regs::setup_boot_vcpu(&fd, entry).map_err(|source| ManagerError::Configure { id, source })?;
            }
            let (handle, ready) = VcpuHandle::spawn(id, fd, self.ctx.clone(), false, true)?;
            ready.wait()?;
            self.table.set_state(id, State::new(Phase::Running))?;
            self.table.publish(id, handle)?;
        }
        self.target.set(boot, Cause::Boot);
        info!("started {boot} boot vCPU(s) of {} possible", self.max_vcpus);
        Ok(())
    }

    /// MSRs, FPU and LAPIC LINTs: what every vCPU needs before it runs, fresh
    /// or reused.
    fn configure(&self, id: u32, fd: &VcpuFd) -> Result<(), ManagerError> {
        let configure = |r: Result<(), regs::RegsError>| r.map_err(|source| ManagerError::Configure { id, source });
        let apic_base = x2apic::needed(&self.topology)
            .then(|| x2apic::apic_base(crate::memory::LAPIC_BASE, self.topology.apic_id(id) == 0));
        configure(regs::setup_msrs(fd, apic_base))?;
        configure(regs::setup_fpu(fd))?;
        configure(regs::setup_lapic_lints(fd))?;
        Ok(())
    }

    fn create_vcpu(&self, id: u32) -> Result<VcpuFd, ManagerError> {
        // KVM's vCPU id is the APIC id: its in-kernel LAPIC takes it as its own.
        let kvm_id = self.topology.apic_id(id);
        let fd = self.vm.create_vcpu(u64::from(kvm_id)).map_err(|source| ManagerError::CreateVcpu { id, source })?;
        let cpuid = cpuid::vcpu_cpuid(&self.supported_cpuid, id, &self.topology);
        fd.set_cpuid2(&cpuid).map_err(|source| ManagerError::Cpuid { id, source })?;
        self.configure(id, &fd)?;
        Ok(fd)
    }

    /// A parked vCPU back in the state of a fresh AP: configured again and
    /// waiting for the guest's INIT/SIPI. CPUID is the one thing not set
    /// again: KVM refuses `KVM_SET_CPUID2` once a vCPU has run unless nothing
    /// changes (and KVM itself updates runtime bits, so a byte-identical
    /// table still differs); the table it keeps is the one this id was
    /// created with.
    fn reuse_parked(&self, id: u32, fd: &VcpuFd) -> Result<(), ManagerError> {
        self.configure(id, fd)?;
        let mp = kvm_bindings::kvm_mp_state { mp_state: kvm_bindings::KVM_MP_STATE_INIT_RECEIVED };
        fd.set_mp_state(mp).map_err(|source| ManagerError::Reset { id, source })
    }

    fn states(&self) -> Vec<State> {
        self.table.states()
    }

    /// vCPUs the guest has or is being given (not being removed).
    fn wanted(&self) -> u32 {
        self.table.states().iter().filter(|s| s.is_wanted()).count() as u32
    }

    /// Raises the GED interrupt: the guest scans the controller's pending bitmaps.
    fn notify_guest(&self) {
        if let Err(e) = self.ged.notify(GED_EVENT_CPU_HOTPLUG) {
            error!("cannot raise the GED interrupt: {e}");
        }
        self.notified_at.set(Some(Instant::now()));
    }

    fn apply(&self, id: u32, event: Event) -> Option<Transition> {
        let t = super::apply(&*self.table, id, event)?;
        info!("vCPU {id}: {event:?}: {:?} -> {:?}", t.from, t.to);
        Some(t)
    }

    /// Reconciles for a resize that arrived at `received`, recording the
    /// VMM's share: request to GED interrupt (if one was raised).
    pub fn reconcile_received(&mut self, received: Instant) -> ResizePlan {
        self.notified_at.set(None);
        let plan = self.reconcile();
        if let Some(at) = self.notified_at.get() {
            let took = at.saturating_duration_since(received);
            self.latencies.resize_notified(took, plan.added.len(), plan.removing.len());
        }
        plan
    }

    fn plan(&self, target: &TargetStatus, reclaim: bool) -> reconciler::Plan {
        match &target.vcpu_ids {
            Some(ids) => reconciler::plan_ids(ids, &self.states(), reclaim),
            None => reconciler::plan(target.desired, &self.states(), reclaim),
        }
    }

    /// The ids the guest has or is being given (not being removed).
    fn wanted_ids(&self) -> Vec<u32> {
        let states = self.table.states();
        (0..states.len() as u32).filter(|&id| states[id as usize].is_wanted()).collect()
    }

    /// The target becomes what the VM has: a count, or (after a targeted
    /// resize) exactly the ids it has.
    fn target_follows(&self, cause: Cause) {
        let have = self.wanted_ids();
        if self.target.status().vcpu_ids.is_some() {
            self.target.set_ids(have, cause);
        } else {
            self.target.set(have.len() as u32, cause);
        }
    }

    /// One step towards the target: take back removals that are wanted
    /// again, add free ids, ask the guest to eject surplus ones.
    pub fn reconcile(&mut self) -> ResizePlan {
        let target = self.target.status();
        let desired = target.desired;
        let mut plan = ResizePlan { seq: target.seq, ..ResizePlan::default() };
        let mut notify = false;
        for id in self.plan(&target, true).reclaim {
            if !self.controller.withdraw_remove(id) {
                continue;
            }
            let Some(t) = self.apply(id, Event::RemoveWithdrawn) else { continue };
            info!("vCPU {id}: removal taken back before the guest saw it");
            self.deadlines[id as usize] = None;
            if t.to.phase == Phase::Adding {
                // The guest never answered the add: tell it again (Linux
                // ignores a device check for a CPU it has), with a new bound.
                self.deadlines[id as usize] = Some(self.clock.now() + self.timeout);
                self.controller.request_insert(id);
                notify = true;
            }
        }
        let step = self.plan(&target, false);
        let mut spawned = Vec::new();
        for &id in &step.add {
            match self.add(id) {
                Ok(ready) => {
                    plan.added.push(id);
                    spawned.push((id, ready));
                    notify = true;
                }
                Err(e) => {
                    error!("vCPU {id}: hot-add failed: {e}");
                    self.target_follows(Cause::VmmError { vcpu: id, error: e.to_string() });
                    plan.error = Some((id, e.to_string()));
                    break;
                }
            }
        }
        for &id in &step.remove {
            notify |= self.remove(id);
            plan.removing.push(id);
        }
        plan.waiting_for = step.waiting_for;
        if notify {
            // Raised once for everything this step asked, including adds that
            // went through before one failed.
            self.notify_guest();
        }
        // The new threads' seccomp filters, checked only now (VcpuHandle::spawn).
        for (id, ready) in spawned {
            if let Err(e) = ready.wait() {
                error!("vCPU {id}: hot-add failed: {e}; taking it back");
                plan.added.retain(|&a| a != id);
                if self.remove(id) {
                    self.notify_guest();
                }
                self.target_follows(Cause::VmmError { vcpu: id, error: e.to_string() });
                plan.error = Some((id, e.to_string()));
            }
        }
        if !plan.added.is_empty() || !plan.removing.is_empty() {
            info!("reconcile towards {desired}: adding {:?}, removing {:?}", plan.added, plan.removing);
        }
        if !plan.waiting_for.is_empty() {
            info!("reconcile towards {desired}: waiting for vCPUs {:?} to be ejected", plan.waiting_for);
        }
        // States moved: whoever waits for the guest checks again.
        self.target.progress().bump();
        plan
    }

    /// Creates (or unparks) vCPU `id`, starts its thread, publishes it and
    /// marks it for the guest to add. The thread's [`Ready`] is for the
    /// caller to check once the guest has been told.
    fn add(&mut self, id: u32) -> Result<Ready, ManagerError> {
        let fd = match self.parked[id as usize].take() {
            Some(fd) => {
                if let Err(e) = self.reuse_parked(id, &fd) {
                    self.parked[id as usize] = Some(fd);
                    return Err(e);
                }
                info!("vCPU {id}: reusing parked KVM vCPU");
                fd
            }
            None => self.create_vcpu(id)?,
        };
        // On failure the fd goes down with the thread that failed to start;
        // the id stays free.
        let (handle, ready) = VcpuHandle::spawn(id, fd, self.ctx.clone(), self.paused_at.is_some(), false)?;
        self.table.publish(id, handle)?;
        self.apply(id, Event::Add);
        self.deadlines[id as usize] = Some(self.clock.now() + self.timeout);
        self.controller.request_insert(id);
        Ok(ready)
    }

    /// Removes vCPU `id`: takes a hot-add back if the guest has not seen it,
    /// else asks the guest to eject. Returns whether the guest must be told.
    fn remove(&mut self, id: u32) -> bool {
        if self.table.state(id).phase == Phase::Adding
            && self.controller.withdraw_insert(id)
            && self.apply(id, Event::AddWithdrawn).is_some()
        {
            self.deadlines[id as usize] = None;
            self.retire(id);
            return false;
        }
        if self.apply(id, Event::Remove).is_some() {
            self.deadlines[id as usize] = Some(self.clock.now() + self.timeout);
            self.controller.request_remove(id);
            info!("vCPU {id}: asked the guest to eject it");
            return true;
        }
        false
    }

    /// Main loop, on the host's wake-up: retire what the guest ejected, let
    /// the target follow what the guest refused or did on its own, re-plan.
    pub fn on_guest_events(&mut self) {
        let mut rollback = None;
        for id in self.host.take_changed() {
            let s = self.table.state(id);
            match s.phase {
                Phase::Ejected => {
                    self.deadlines[id as usize] = None;
                    self.retire(id);
                }
                Phase::Acknowledged | Phase::Running => self.deadlines[id as usize] = None,
                _ => {}
            }
            if matches!(s.reason, Reason::EjectRefused | Reason::EjectedByGuest | Reason::AddFailed) {
                self.deadlines[id as usize] = None;
                rollback = Some((id, s.reason));
            }
        }
        self.follow_rollback(rollback);
        self.reconcile();
    }

    /// After the guest overrode the VMM: the target becomes what it has.
    fn follow_rollback(&mut self, rollback: Option<(u32, Reason)>) {
        let Some((vcpu, reason)) = rollback else { return };
        let have = self.wanted();
        if have != self.target.desired() {
            warn!("vCPU {vcpu}: {reason:?}; target follows the guest: {} -> {have} vCPUs", self.target.desired());
        }
        self.target_follows(Cause::Rollback { vcpu, reason });
    }

    /// Bit cleared → grace period → thread stopped and joined → fd parked.
    fn retire(&mut self, id: u32) {
        let handle = match self.table.retire(id, GRACE_PERIOD_LIMIT) {
            Ok(h) => h,
            Err(TableError::GracePeriodTimeout { readers, waited, .. }) => {
                warn!("vCPU {id}: readers {readers:?} still inside after {waited:?}; retrying the retire later");
                self.retire_retry.push(id);
                return;
            }
            Err(e) => {
                error!("vCPU {id}: retire failed: {e}");
                return;
            }
        };
        self.join(id, handle, self.stop_limit);
    }

    fn join(&mut self, id: u32, handle: VcpuHandle, limit: Duration) {
        match handle.stop(limit) {
            Ok(fd) => {
                self.parked[id as usize] = Some(fd);
                self.apply(id, Event::Retired);
                self.latencies.retired(self.host.take_eject_age(id));
                info!("vCPU {id}: retired (thread joined, KVM vCPU parked for reuse)");
            }
            Err(StopFailed { handle: Some(handle), error }) => {
                if self.table.state(id).phase != Phase::Stuck {
                    error!("vCPU {id}: {error}; its id is not reused until the thread stops");
                    self.apply(id, Event::StopTimedOut);
                }
                self.stuck.push((id, handle));
            }
            Err(StopFailed { handle: None, error }) => {
                // The thread is gone, and its fd with it: the id is free for
                // a fresh KVM vCPU... which KVM refuses for a used id. Keep it stuck.
                error!("vCPU {id}: {error}; its KVM vCPU is lost");
                self.apply(id, Event::StopTimedOut);
            }
        }
    }

    /// Main loop, periodic while [`Self::needs_tick`]: roll back what the
    /// guest did not answer in time, look in on hot-added vCPUs the guest
    /// may have started, retry retires and joins that could not finish.
    pub fn tick(&mut self) {
        if self.paused_at.is_some() {
            return;
        }
        let now = self.clock.now();
        let mut rollback = None;
        let mut notify = false;
        for id in 0..self.max_vcpus {
            let Some(deadline) = self.deadlines[id as usize] else { continue };
            if now < deadline {
                continue;
            }
            self.deadlines[id as usize] = None;
            match self.table.state(id).phase {
                Phase::Adding if self.controller.withdraw_insert(id) => {
                    warn!("vCPU {id}: the guest did not take the hot-add within {:?}; taken back", self.timeout);
                    if self.apply(id, Event::AddTimedOut).is_some() {
                        self.retire(id);
                        rollback = Some((id, Reason::AddTimeout));
                    }
                }
                Phase::Adding => {
                    warn!(
                        "vCPU {id}: the guest took the hot-add but did not answer in {:?}; asking it to eject",
                        self.timeout
                    );
                    if self.apply(id, Event::AddUnanswered).is_some() {
                        self.deadlines[id as usize] = Some(now + self.timeout);
                        self.controller.request_remove(id);
                        notify = true;
                        rollback = Some((id, Reason::AddTimeout));
                    }
                }
                Phase::Removing => {
                    self.controller.withdraw_remove(id);
                    let seen = self.whereabouts(id);
                    if let Some(t) = self.apply(id, Event::EjectTimedOut) {
                        warn!(
                            "vCPU {id}: guest did not eject it within {:?}; removal rolled back (the vCPU was {seen})",
                            self.timeout
                        );
                        if t.to.phase == Phase::Ejected {
                            self.retire(id);
                        }
                        rollback = Some((id, t.to.reason));
                    }
                }
                _ => {}
            }
        }
        if notify {
            self.notify_guest();
        }
        if rollback.is_some() {
            self.follow_rollback(rollback);
            self.reconcile();
        }
        self.kick_unstarted();
        let late: Vec<u32> = self.retire_retry.iter().copied().chain(self.stuck.iter().map(|(id, _)| *id)).collect();
        for id in std::mem::take(&mut self.retire_retry) {
            self.retire(id);
        }
        for (id, handle) in std::mem::take(&mut self.stuck) {
            self.join(id, handle, Duration::ZERO);
        }
        // An id that finally got free may be what the target waits for.
        if late.iter().any(|&id| self.table.state(id).phase == Phase::Parked) {
            self.reconcile();
        }
    }

    /// Whether anything waits on time: a guest answer with a deadline, a
    /// hot-added vCPU the guest has not started yet, a retire or join to
    /// retry. While nothing does, the main loop lets its tick sleep, and
    /// an idle VM does not wake lithe at all. Paused: deadlines stop.
    pub fn needs_tick(&mut self) -> bool {
        if self.paused_at.is_some() {
            return false;
        }
        if self.deadlines.iter().any(Option::is_some) || !self.retire_retry.is_empty() || !self.stuck.is_empty() {
            return true;
        }
        let table = &self.table;
        self.reader.read().iter().any(|(id, h)| !h.is_started() && waits_for_start(table.state(id).phase))
    }

    /// Where the guest is on vCPU `id`, for a log line: an unanswered eject
    /// reads differently if that CPU sat halted than if it spun somewhere.
    fn whereabouts(&mut self, id: u32) -> String {
        let seen = self.reader.read().with_value(id, |h| h.whereabouts(PROBE_LIMIT));
        match seen {
            Some(Some(w)) => w.to_string(),
            Some(None) => format!("not answering a probe within {PROBE_LIMIT:?}"),
            None => "not running".into(),
        }
    }

    /// Hot-added vCPUs notice the guest starting them only when they leave
    /// `KVM_RUN`: kick those the guest has not started yet.
    fn kick_unstarted(&mut self) {
        let table = &self.table;
        for (id, h) in self.reader.read().iter() {
            if !h.is_started() && waits_for_start(table.state(id).phase) {
                h.kick();
            }
        }
    }

    /// Pauses every vCPU, or none: if one does not pause, the others resume.
    /// Deadlines stop while paused.
    pub fn pause(&mut self) -> Result<(), ManagerError> {
        let g = self.reader.read();
        let handles: Vec<&VcpuHandle> = g.iter().map(|(_, h)| h).collect();
        for (i, h) in handles.iter().enumerate() {
            if let Err(e) = h.pause(self.stop_limit) {
                error!("vCPU {}: {e}; resuming the vCPUs already paused", h.id);
                for h in &handles[..=i] {
                    h.resume();
                }
                return Err(e.into());
            }
        }
        drop(g);
        self.paused_at = Some(self.clock.now());
        Ok(())
    }

    pub fn resume(&mut self) {
        let g = self.reader.read();
        for (_, h) in g.iter() {
            h.resume();
        }
        drop(g);
        if let Some(at) = self.paused_at.take() {
            let paused_for = self.clock.now().saturating_duration_since(at);
            for d in self.deadlines.iter_mut().flatten() {
                *d += paused_for;
            }
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// Stops every vCPU thread (VM teardown).
    pub fn stop_all(&mut self) {
        for id in 0..self.max_vcpus {
            let s = self.table.state(id);
            if s.is_live() {
                self.apply(id, Event::Stop);
            }
            if matches!(self.table.state(id).phase, Phase::Ejected) {
                self.retire(id);
            }
        }
        for (id, handle) in std::mem::take(&mut self.stuck) {
            self.join(id, handle, self.stop_limit);
        }
        for (id, _) in &self.stuck {
            error!("vCPU {id}: thread still running at teardown; leaving it behind");
        }
    }
}

/// A phase in which the guest may start the vCPU: kicked until it has.
fn waits_for_start(phase: Phase) -> bool {
    matches!(phase, Phase::Adding | Phase::Acknowledged | Phase::Removing)
}
