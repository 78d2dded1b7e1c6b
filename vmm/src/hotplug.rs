//! The vCPU hotplug stack, built in one place for every VM and for the
//! in-process test bed (`vmm/tests/bed`), so the bed exercises the wiring
//! lithe runs: KVM's split irqchip with lithe's IOAPIC, the vCPU table with
//! the fence mode lithe picks, the host that turns the guest's `_OST`/`_EJ0`
//! into lifecycle events, the CPU hotplug controller and the GED on the
//! MMIO bus, and the manager over them.

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use log::{info, warn};
use vmm_sys_util::eventfd::EventFd;

use devices::cpu_hotplug::{self, CpuHotplugController};
use devices::ged::{Ged, GED_MMIO_LEN};
use devices::ioapic::{Ioapic, IOAPIC_MMIO_LEN};
use devices::{Bus, EventFdTrigger};

use crate::acpi::GED_IRQ;
use crate::arch::topology::Topology;
use crate::arch::{irq_routing, x2apic};
use crate::config::CpusConfig;
use crate::counters::Latencies;
use crate::cpu::clock::Clock;
use crate::cpu::hotplug_host::HotplugHost;
use crate::cpu::manager::{ManagerParts, VcpuManager};
use crate::cpu::vcpu::{VcpuContext, VcpuHandle};
use crate::cpu::VcpuTable;
use crate::exit::ExitNotifier;
use crate::memory;
use crate::seccomp::Filter;

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("{what}: {source}")]
    KvmCall { what: &'static str, source: kvm_ioctls::Error },
    #[error("creating an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("mapping the hotplug devices: {0}")]
    Bus(#[from] devices::BusError),
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HotplugError {
    move |source| HotplugError::KvmCall { what, source }
}

/// [`irq_routing::irqfd`], as this stack's error.
fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFdTrigger, HotplugError> {
    irq_routing::irqfd(vm, gsi).map_err(HotplugError::EventFd)
}

pub struct HotplugStack {
    pub table: Arc<VcpuTable<VcpuHandle>>,
    pub host: Arc<HotplugHost>,
    pub controller: Arc<CpuHotplugController>,
    pub ged: Arc<Ged<EventFdTrigger>>,
    pub ioapic: Arc<Ioapic>,
    /// The GED, the CPU hotplug controller and the IOAPIC; the caller adds
    /// its own devices, then hands it to the vCPUs ([`VcpuParts::mmio`]).
    pub mmio: Bus,
    pub topology: Topology,
}

/// What the vCPUs get besides the stack.
pub struct VcpuParts {
    /// Port I/O devices (the serial port, the power devices; the bed's own).
    pub pio: Bus,
    /// [`HotplugStack::mmio`] with the caller's devices added.
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitNotifier>,
    pub seccomp: Option<Arc<Filter>>,
    pub clock: Arc<dyn Clock>,
    pub stop_limit: Duration,
    pub latencies: Arc<Latencies>,
}

impl HotplugStack {
    /// Interrupts first (split irqchip, x2APIC ids when the topology needs
    /// them, the IOAPIC), then the hotplug devices. `hotplug_evt` wakes the
    /// main loop whenever the guest changes a vCPU.
    pub fn new(vm: &Arc<VmFd>, cpus: &CpusConfig, hotplug_evt: &EventFd) -> Result<HotplugStack, HotplugError> {
        // LAPICs in KVM, lithe's own IOAPIC, no PIC or PIT (arch/irq_routing.rs).
        irq_routing::enable_split_irqchip(vm).map_err(kvm_call("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        let topology = cpus.layout();
        if x2apic::needed(&topology) {
            x2apic::enable_32bit_ids(vm).map_err(kvm_call("KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)"))?;
            info!(
                "x2APIC: APIC ids up to {}: vCPUs start in x2APIC mode with 32-bit ids and extended destination ids",
                topology.apic_id(topology.vcpus() - 1)
            );
        }
        let ioapic = Arc::new(Ioapic::new(Arc::new(irq_routing::KvmMsiRoutes(vm.clone()))));
        let table = Arc::new(VcpuTable::new(cpus.max_vcpus));
        info!("vCPU table: {} slots, grace periods by {:?}", cpus.max_vcpus, table.fence_mode());
        let host = Arc::new(HotplugHost::new(table.clone(), hotplug_evt.try_clone().map_err(HotplugError::EventFd)?));
        let controller = Arc::new(CpuHotplugController::new(cpus.max_vcpus, host.clone()));
        let ged = Arc::new(Ged::new(irqfd(vm, GED_IRQ)?));
        let mut mmio = Bus::new();
        mmio.insert(memory::GED_MMIO_BASE, GED_MMIO_LEN, ged.clone())?;
        mmio.insert(memory::CPU_HOTPLUG_MMIO_BASE, cpu_hotplug::MMIO_LEN, controller.clone())?;
        mmio.insert(memory::IOAPIC_BASE, IOAPIC_MMIO_LEN, ioapic.clone())?;
        Ok(HotplugStack { table, host, controller, ged, ioapic, mmio, topology })
    }

    /// The vCPU manager over this stack, with the CPUID every vCPU gets.
    pub fn manager(
        &self,
        kvm: &Kvm,
        vm: &Arc<VmFd>,
        cpus: &CpusConfig,
        p: VcpuParts,
    ) -> Result<VcpuManager, HotplugError> {
        let mut supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        if !cpus.nested {
            crate::arch::cpuid::hide_virtualization(supported_cpuid.as_mut_slice());
        }
        if x2apic::needed(&self.topology) && !x2apic::offer_ext_dest_id(supported_cpuid.as_mut_slice()) {
            warn!("x2APIC: KVM's CPUID has no paravirtual feature leaf; the guest will not use APIC ids past 255");
        }
        let on_started = {
            let host = self.host.clone();
            Arc::new(move |id| host.vcpu_started(id))
        };
        let ctx = VcpuContext {
            pio: Arc::new(p.pio),
            mmio: p.mmio,
            exit: p.exit,
            seccomp: p.seccomp,
            on_started: Some(on_started),
            ioapic: Some(self.ioapic.clone()),
        };
        Ok(VcpuManager::new(ManagerParts {
            vm: vm.clone(),
            table: self.table.clone(),
            host: self.host.clone(),
            controller: self.controller.clone(),
            ged: self.ged.clone(),
            ctx,
            supported_cpuid,
            topology: self.topology,
            hotplug_timeout: Duration::from_millis(cpus.eject_timeout_ms),
            clock: p.clock,
            stop_limit: p.stop_limit,
            latencies: p.latencies,
        }))
    }
}
