//! The vCPU manager: the only writer of the vCPU table. It creates vCPUs at
//! boot, carries out resizes (hot-add, eject requests), retires vCPUs the
//! guest ejected, and rolls back removals the guest refuses or ignores.
//!
//! Resize, top to bottom: `resize()` picks ids → `add()` creates or unparks a
//! KVM vCPU, starts its thread, publishes it in the table and marks it
//! pending in the CPU hotplug controller → the GED interrupt makes the guest
//! scan. Down: `request_removal()` marks the id Removing and pending → the
//! guest offlines the CPU and calls `_EJ0` → [`HotplugHost`] queues it →
//! `retire_ejected()` clears its table bit, waits a grace period, stops and
//! joins the thread, parks the fd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use log::{error, info, warn};

use devices::cpu_hotplug::CpuHotplugController;
use devices::ged::{Ged, GED_EVENT_CPU_HOTPLUG};
use devices::EventFdTrigger;

use super::hotplug_host::{HotplugHost, Rollback};
use super::table::{Reader, TableError, VcpuState, VcpuTable};
use super::vcpu::{VcpuContext, VcpuError, VcpuHandle};
use crate::arch::{cpuid, regs};

/// How long `retire` waits for readers to leave their sections.
const GRACE_PERIOD_LIMIT: Duration = Duration::from_secs(5);
/// How long a vCPU thread gets to stop after being kicked.
const STOP_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("desired_vcpus must be between 1 and {max}, got {desired}")]
    InvalidCount { desired: u32, max: u32 },
    #[error("vCPUs {ids:?} are still being removed; retry when the guest has ejected them")]
    RemovalPending { ids: Vec<u32> },
    #[error("the VM is paused; resume it before resizing")]
    Paused,
    #[error("creating KVM vCPU {id}: {source}")]
    CreateVcpu { id: u32, source: kvm_ioctls::Error },
    #[error("configuring vCPU {id}: {source}")]
    Configure { id: u32, source: regs::RegsError },
    #[error("setting CPUID of vCPU {id}: {source}")]
    Cpuid { id: u32, source: kvm_ioctls::Error },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Table(#[from] TableError),
}

impl ManagerError {
    /// Errors the caller caused (bad request or wrong moment) rather than the VMM.
    pub fn is_client_error(&self) -> bool {
        matches!(self, ManagerError::InvalidCount { .. } | ManagerError::RemovalPending { .. } | ManagerError::Paused)
    }
}

/// What a resize set in motion.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResizePlan {
    pub added: Vec<u32>,
    pub removing: Vec<u32>,
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
    max_vcpus: u32,
    /// KVM vCPU fds of retired vCPUs, by id: KVM cannot destroy them.
    parked: Vec<Option<VcpuFd>>,
    /// When each pending removal gives up.
    removal_deadline: Vec<Option<Instant>>,
    /// Ejected vCPUs whose grace period has not completed yet.
    retire_retry: Vec<u32>,
    eject_timeout: Duration,
    paused: bool,
}

pub struct ManagerParts {
    pub vm: Arc<VmFd>,
    pub table: Arc<VcpuTable<VcpuHandle>>,
    pub host: Arc<HotplugHost>,
    pub controller: Arc<CpuHotplugController>,
    pub ged: Arc<Ged<EventFdTrigger>>,
    pub ctx: VcpuContext,
    pub supported_cpuid: CpuId,
    pub eject_timeout: Duration,
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
            max_vcpus: max,
            parked: (0..max).map(|_| None).collect(),
            removal_deadline: vec![None; max as usize],
            retire_retry: Vec::new(),
            eject_timeout: p.eject_timeout,
            paused: false,
        }
    }

    /// Creates and starts vCPUs `0..boot`; vCPU 0 starts at `entry` in long mode.
    pub fn start_boot_vcpus(&mut self, boot: u32, entry: u64) -> Result<(), ManagerError> {
        for id in 0..boot {
            let fd = self.create_vcpu(id)?;
            if id == 0 {
                regs::setup_boot_vcpu(&fd, entry).map_err(|source| ManagerError::Configure { id, source })?;
            }
            self.start(id, fd, VcpuState::Online)?;
        }
        info!("started {boot} boot vCPU(s) of {} possible", self.max_vcpus);
        Ok(())
    }

    fn create_vcpu(&self, id: u32) -> Result<VcpuFd, ManagerError> {
        let fd = self.vm.create_vcpu(u64::from(id)).map_err(|source| ManagerError::CreateVcpu { id, source })?;
        let cpuid = cpuid::vcpu_cpuid(&self.supported_cpuid, id, self.max_vcpus);
        fd.set_cpuid2(&cpuid).map_err(|source| ManagerError::Cpuid { id, source })?;
        let configure = |r: Result<(), regs::RegsError>| r.map_err(|source| ManagerError::Configure { id, source });
        configure(regs::setup_msrs(&fd))?;
        configure(regs::setup_fpu(&fd))?;
        configure(regs::setup_lapic_lints(&fd))?;
        Ok(fd)
    }

    /// Starts the thread for `id` and publishes it: the slot is complete
    /// (thread running, handle in place) before its bit becomes visible.
    fn start(&mut self, id: u32, fd: VcpuFd, state: VcpuState) -> Result<(), ManagerError> {
        let handle = VcpuHandle::spawn(id, fd, self.ctx.clone(), self.paused)?;
        self.table.set_state(id, state)?;
        self.host.set_rollback(id, Rollback::None);
        if let Err(e) = self.table.publish(id, handle) {
            error!("vCPU {id}: cannot publish: {e}");
            return Err(e.into());
        }
        Ok(())
    }

    /// Present vCPUs the guest has or will have (not being removed).
    fn active(&mut self) -> Vec<u32> {
        let g = self.reader.read();
        g.iter()
            .map(|(id, _)| id)
            .filter(|id| matches!(self.table.state(*id), VcpuState::Inserting | VcpuState::Online))
            .collect()
    }

    /// Sets the number of vCPUs the guest should have. Returns at once; the
    /// guest completes the change asynchronously.
    pub fn resize(&mut self, desired: u32) -> Result<ResizePlan, ManagerError> {
        if desired == 0 || desired > self.max_vcpus {
            return Err(ManagerError::InvalidCount { desired, max: self.max_vcpus });
        }
        if self.paused {
            return Err(ManagerError::Paused);
        }
        let active = self.active();
        let current = active.len() as u32;
        let mut plan = ResizePlan::default();
        if desired > current {
            let free: Vec<u32> = (0..self.max_vcpus)
                .filter(|id| matches!(self.table.state(*id), VcpuState::Absent | VcpuState::Parked))
                .take((desired - current) as usize)
                .collect();
            if free.len() < (desired - current) as usize {
                let ids = (0..self.max_vcpus)
                    .filter(|id| matches!(self.table.state(*id), VcpuState::Removing | VcpuState::Ejected))
                    .collect();
                return Err(ManagerError::RemovalPending { ids });
            }
            for id in free {
                self.add(id)?;
                plan.added.push(id);
            }
        } else {
            // Highest ids first; vCPU 0 is never removable.
            for id in active.into_iter().rev().filter(|id| *id != 0).take((current - desired) as usize) {
                self.request_removal(id);
                plan.removing.push(id);
            }
        }
        if !plan.added.is_empty() || !plan.removing.is_empty() {
            info!("resize {current} -> {desired}: adding {:?}, removing {:?}", plan.added, plan.removing);
            if let Err(e) = self.ged.notify(GED_EVENT_CPU_HOTPLUG) {
                error!("cannot raise the GED interrupt: {e}");
            }
        }
        Ok(plan)
    }

    fn add(&mut self, id: u32) -> Result<(), ManagerError> {
        let fd = match self.parked[id as usize].take() {
            Some(fd) => {
                info!("vCPU {id}: reusing parked KVM vCPU");
                fd
            }
            None => self.create_vcpu(id)?,
        };
        self.start(id, fd, VcpuState::Inserting)?;
        self.controller.request_insert(id);
        info!("vCPU {id}: created and started; guest notified of the hot-add");
        Ok(())
    }

    fn request_removal(&mut self, id: u32) {
        let from = self.table.state(id);
        if self.table.transition(id, from, VcpuState::Removing) {
            self.removal_deadline[id as usize] = Some(Instant::now() + self.eject_timeout);
            self.host.set_rollback(id, Rollback::None);
            self.controller.request_remove(id);
            info!("vCPU {id}: asked the guest to eject it");
        }
    }

    /// Retires the vCPUs the guest ejected (main loop, on the host's event fd).
    pub fn retire_ejected(&mut self) {
        let mut ids = self.host.take_ejected();
        ids.append(&mut self.retire_retry);
        for id in ids {
            self.removal_deadline[id as usize] = None;
            match self.retire(id) {
                Ok(()) => {}
                Err(ManagerError::Table(TableError::GracePeriodTimeout { readers, waited, .. })) => {
                    warn!("vCPU {id}: readers {readers:?} still inside after {waited:?}; retrying the retire later");
                    self.retire_retry.push(id);
                }
                Err(e) => error!("vCPU {id}: retire failed: {e}"),
            }
        }
    }

    /// Bit cleared → grace period → thread stopped and joined → fd parked.
    fn retire(&mut self, id: u32) -> Result<(), ManagerError> {
        let handle = self.table.retire(id, GRACE_PERIOD_LIMIT)?;
        let fd = handle.stop(STOP_LIMIT)?;
        self.parked[id as usize] = Some(fd);
        self.table.set_state(id, VcpuState::Parked)?;
        info!("vCPU {id}: retired (thread joined, KVM vCPU parked for reuse)");
        Ok(())
    }

    /// Rolls back removals the guest did not complete in time (main loop, periodic).
    pub fn check_removal_deadlines(&mut self) {
        let now = Instant::now();
        for id in 0..self.max_vcpus {
            let Some(deadline) = self.removal_deadline[id as usize] else {
                continue;
            };
            match self.table.state(id) {
                VcpuState::Removing if now >= deadline => {
                    if self.table.transition(id, VcpuState::Removing, VcpuState::Online) {
                        self.controller.cancel(id);
                        self.host.set_rollback(id, Rollback::Timeout);
                        warn!("vCPU {id}: guest did not eject it within {:?}; removal rolled back", self.eject_timeout);
                    }
                    self.removal_deadline[id as usize] = None;
                }
                VcpuState::Removing | VcpuState::Ejected => {}
                _ => self.removal_deadline[id as usize] = None,
            }
        }
        if !self.retire_retry.is_empty() {
            self.retire_ejected();
        }
    }

    pub fn pause(&mut self) -> Result<(), ManagerError> {
        let g = self.reader.read();
        for (_, h) in g.iter() {
            h.pause(STOP_LIMIT)?;
        }
        drop(g);
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) {
        let g = self.reader.read();
        for (_, h) in g.iter() {
            h.resume();
        }
        drop(g);
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stops every vCPU thread (VM teardown).
    pub fn stop_all(&mut self) {
        for id in 0..self.max_vcpus {
            if matches!(self.table.state(id), VcpuState::Absent | VcpuState::Parked) {
                continue;
            }
            match self.retire(id) {
                Ok(()) | Err(ManagerError::Table(TableError::NotPresent { .. })) => {}
                Err(e) => error!("vCPU {id}: stopping failed: {e}"),
            }
        }
    }
}
