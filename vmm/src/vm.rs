//! One virtual machine: KVM VM, guest memory, devices, ACPI tables, loaded
//! payload and the vCPU manager, assembled from a [`VmConfig`].

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::ThreadInit;
use kvm_ioctls::{Kvm, VmFd};
use log::info;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

use devices::ged::Ged;
use devices::power::{AcpiPowerDevice, I8042Device, PowerEvent, PowerHandler, ACPI_POWER_LEN, ACPI_POWER_PORT};
use devices::power::{I8042_DATA_PORT, I8042_LEN};
use devices::serial::{SerialDevice, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use devices::{Bus, BusError, EventFdTrigger};

use crate::acpi;
use crate::arch::{boot, regs};
use crate::config::{SerialConfig, VmConfig};
use crate::counters::{CounterSources, Latencies};
use crate::cpu::clock::SystemClock;
use crate::cpu::hotplug_host::HotplugHost;
use crate::cpu::manager::VcpuManager;
use crate::cpu::vcpu::{install_kick_handler, VcpuHandle};
use crate::cpu::VcpuTable;
use crate::device_manager::{DeviceManager, WorkerInit};
use crate::exit::{ExitNotifier, VmExit};
use crate::hotplug::{HotplugStack, VcpuParts};
use crate::memory::{self, GuestMemory};
use crate::memory_hotplug::{MemoryHotplug, MemoryResizeError, Parts as MemoryParts};
use crate::resize::Target;
use crate::seccomp::Filters;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("{what}: {source}")]
    KvmCall { what: &'static str, source: kvm_ioctls::Error },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error("mapping devices: {0}")]
    Bus(#[from] BusError),
    #[error("serial output {path}: {source}")]
    SerialFile { path: String, source: std::io::Error },
    #[error("creating an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error(transparent)]
    Manager(#[from] crate::cpu::manager::ManagerError),
    #[error(transparent)]
    Hotplug(#[from] crate::hotplug::HotplugError),
    #[error(transparent)]
    Devices(#[from] crate::device_manager::DeviceError),
    #[error("no VM is configured")]
    NotConfigured,
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmCall { what, source }
}

/// How a VM generation ended, for API requests still waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Ended {
    Running = 0,
    Rebooted = 1,
    ShutDown = 2,
}

/// Everything the API may read about a running VM, without locks.
pub struct VmView {
    /// The config it was built from (`boot_vcpus` as at its boot).
    pub config: VmConfig,
    pub table: Arc<VcpuTable<VcpuHandle>>,
    pub host: Arc<HotplugHost>,
    pub target: Arc<Target>,
    /// What `vm.counters` reports (the devices and the VMM's latencies).
    pub counters: Option<CounterSources>,
    /// Hot-pluggable memory slots, when the VM has room to grow.
    pub memory: Option<Arc<crate::memory_hotplug::slots::Slots>>,
    ended: AtomicU8,
}

impl VmView {
    /// A view of the given parts, for a VM that is running.
    pub fn new(
        config: VmConfig,
        table: Arc<VcpuTable<VcpuHandle>>,
        host: Arc<HotplugHost>,
        target: Arc<Target>,
        counters: Option<CounterSources>,
    ) -> Self {
        VmView { config, table, host, target, counters, memory: None, ended: AtomicU8::new(Ended::Running as u8) }
    }

    pub fn ended(&self) -> Ended {
        match self.ended.load(Ordering::Acquire) {
            1 => Ended::Rebooted,
            2 => Ended::ShutDown,
            _ => Ended::Running,
        }
    }

    /// Marks how this generation ended, and wakes resizes waiting on it.
    pub fn set_ended(&self, how: Ended) {
        self.ended.store(how as u8, Ordering::Release);
        self.target.progress().bump();
    }
}

pub struct Vm {
    manager: VcpuManager,
    serial: Arc<SerialDevice>,
    view: Arc<VmView>,
    exit: Arc<ExitNotifier>,
    ged: Arc<Ged<EventFdTrigger>>,
    virtio: Arc<DeviceManager>,
    // Dropped after the manager has stopped every vCPU thread (see Drop).
    _vm_fd: Arc<VmFd>,
    /// Hot-plugged memory, when the VM has room for it (`memory.hotplug_size`).
    memory_hotplug: Option<MemoryHotplug>,
    _memory: GuestMemory,
    _kvm: Kvm,
}

/// Whether /dev/kvm is the software-nested PVM hypervisor; only for logs.
fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

impl Vm {
    /// Builds the VM and starts its boot vCPUs; `seccomp` filters their threads.
    /// `exit_evt` and `hotplug_evt` wake the main loop when the VM stops and
    /// when the guest changes a vCPU.
    pub fn create(
        config: &VmConfig,
        exit_evt: &EventFd,
        hotplug_evt: &EventFd,
        input_room: &EventFd,
        seccomp: Option<&Filters>,
    ) -> Result<Vm, VmError> {
        let t0 = std::time::Instant::now();
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        config.validate(crate::config::KvmLimits::of(&kvm))?;
        if kvm_is_pvm() {
            info!("KVM is kvm_pvm (software-nested): guest kernel code is emulated; expect slow boots");
        }
        install_kick_handler().map_err(VmError::Signal)?;
        let exit = Arc::new(ExitNotifier::new(exit_evt.try_clone().map_err(VmError::EventFd)?));
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
        vm_fd.set_tss_address(memory::KVM_TSS_ADDR as usize).map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd.set_identity_map_address(memory::KVM_IDENTITY_MAP_ADDR).map_err(kvm_call("KVM_SET_IDENTITY_MAP_ADDR"))?;
        // LAPICs in KVM, lithe's own IOAPIC, no PIC or PIT (arch/irq_routing.rs).
        let cpus = config.cpus;
        let mut stack = HotplugStack::new(&vm_fd, &cpus, hotplug_evt)?;

        let mem = memory::create_guest_memory(config.memory.size, config.memory.shared)?;
        if config.memory.thp {
            memory::advise_huge_pages(&mem);
        }
        // SAFETY: `mem` is kept in the Vm and dropped after the VM fd and every
        // vCPU are gone (field order, and Drop stops the vCPUs first).
        unsafe { memory::register_guest_memory(&vm_fd, &mem) }.map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;

        let t_memory = t0.elapsed();

        // Room to grow: the memory hotplug controller, its slots, and (below,
        // once the memory map devices read exists) the manager of them.
        let area =
            crate::memory_hotplug::layout::Area::new(config.memory.size, config.memory.hotplug_size.unwrap_or(0));
        let mem_slots = crate::memory_hotplug::slot_count(area.capacity);
        let memory_parts = if mem_slots > 0 {
            let wake = hotplug_evt.try_clone().map_err(VmError::EventFd)?;
            let slots = Arc::new(crate::memory_hotplug::slots::Slots::new(mem_slots, wake));
            let controller = Arc::new(devices::mem_hotplug::MemHotplugController::new(slots.clone(), mem_slots));
            stack.mmio.insert(memory::MEM_HOTPLUG_MMIO_BASE, devices::mem_hotplug::MMIO_LEN, controller.clone())?;
            Some((slots, controller))
        } else {
            None
        };

        // Devices.
        let power: PowerHandler = {
            let exit = exit.clone();
            Arc::new(move |e| {
                exit.notify(match e {
                    PowerEvent::Shutdown => VmExit::Shutdown,
                    PowerEvent::Reboot => VmExit::Reboot,
                })
            })
        };
        let out: Box<dyn Write + Send> = match &config.serial {
            SerialConfig::Tty => Box::new(std::io::stdout()),
            SerialConfig::Off => Box::new(std::io::sink()),
            SerialConfig::File { file } => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .map_err(|source| VmError::SerialFile { path: file.display().to_string(), source })?,
            ),
        };
        let room = input_room.try_clone().map_err(VmError::EventFd)?;
        let serial = Arc::new(SerialDevice::with_input_room(
            crate::arch::irq_routing::irqfd(&vm_fd, COM1_IRQ).map_err(VmError::EventFd)?,
            out,
            room,
        ));
        let mut pio = Bus::new();
        pio.insert(u64::from(COM1_PORT), COM1_PORT_LEN, serial.clone())?;
        let i8042 = Arc::new(I8042Device::new(power.clone()));
        pio.insert(u64::from(I8042_DATA_PORT), I8042_LEN, i8042)?;
        pio.insert(u64::from(ACPI_POWER_PORT), ACPI_POWER_LEN, Arc::new(AcpiPowerDevice::new(power)))?;

        // Virtio devices, on worker threads of their own under their filters.
        let init = |f: &Arc<crate::seccomp::Filter>| -> ThreadInit {
            let filter = f.clone();
            Arc::new(move || filter.apply().map_err(|e| e.to_string()))
        };
        let worker_init = WorkerInit {
            device: seccomp.map(|f| init(&f.device)),
            vsock: seccomp.map(|f| init(&f.vsock)),
            net: seccomp.map(|f| init(&f.net)),
            fs: seccomp.map(|f| init(&f.fs)),
        };
        let guest_memory = GuestMemoryAtomic::new(mem.clone());
        let virtio =
            Arc::new(DeviceManager::new(&config.devices, &vm_fd, &guest_memory, &mut stack.mmio, &worker_init)?);

        // Payload and firmware tables.
        let p = &config.payload;
        let t_devices = t0.elapsed();
        let entry = boot::load_payload(&mem, &p.kernel, p.initramfs.as_deref(), &p.cmdline, config.memory.size)?;
        let t_payload = t0.elapsed();
        regs::write_boot_tables(&mem)?;
        acpi::build(cpus.boot_vcpus, &stack.topology, mem_slots, &virtio.windows())?.write(&mem)?;
        let t_tables = t0.elapsed();

        let latencies = Arc::new(Latencies::default());
        let clock: Arc<dyn crate::cpu::clock::Clock> = Arc::new(SystemClock);
        let counters = CounterSources {
            controller: stack.controller.clone(),
            ged: stack.ged.clone(),
            serial: serial.clone(),
            latencies: latencies.clone(),
            devices: virtio.clone(),
            memory: memory_parts.as_ref().map(|(s, c)| (c.clone(), s.clone())),
        };
        let memory_hotplug = memory_parts.map(|(slots, controller)| {
            MemoryHotplug::new(MemoryParts {
                boot_size: config.memory.size,
                area,
                slots,
                controller,
                ged: stack.ged.clone(),
                vm_fd: vm_fd.clone(),
                memory: guest_memory.clone(),
                shared: config.memory.shared,
                devices: virtio.clone(),
                eject_timeout: Duration::from_millis(config.cpus.eject_timeout_ms),
                latencies: latencies.clone(),
                clock: clock.clone(),
            })
        });
        let mmio = Arc::new(std::mem::take(&mut stack.mmio));
        let mut manager = stack.manager(
            &kvm,
            &vm_fd,
            &cpus,
            VcpuParts {
                pio,
                mmio,
                exit: exit.clone(),
                seccomp: seccomp.map(|f| f.vcpu.clone()),
                clock,
                stop_limit: crate::cpu::manager::STOP_LIMIT,
                latencies,
            },
        )?;
        manager.start_boot_vcpus(cpus.boot_vcpus, entry.0 .0)?;
        // Where start-up time goes (vm.counters has the total to the first KVM_RUN).
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        info!(
            "VM built in {:.1} ms: KVM and memory {:.1}, devices {:.1}, payload {:.1}, tables {:.1}, vCPUs {:.1}",
            ms(t0.elapsed()),
            ms(t_memory),
            ms(t_devices - t_memory),
            ms(t_payload - t_devices),
            ms(t_tables - t_payload),
            ms(t0.elapsed() - t_tables)
        );
        info!(
            "VM booting: {} MiB, {} of {} vCPUs, kernel {}",
            config.memory.size >> 20,
            cpus.boot_vcpus,
            cpus.max_vcpus,
            p.kernel.display()
        );
        let target = manager.target().clone();
        let mut view = VmView::new(config.clone(), stack.table, stack.host, target, Some(counters));
        view.memory = memory_hotplug.as_ref().map(|m| m.slots().clone());
        let view = Arc::new(view);
        Ok(Vm {
            manager,
            serial,
            view,
            exit,
            ged: stack.ged,
            virtio,
            _vm_fd: vm_fd,
            memory_hotplug,
            _memory: mem,
            _kvm: kvm,
        })
    }

    pub fn manager(&mut self) -> &mut VcpuManager {
        &mut self.manager
    }

    pub fn serial(&self) -> &Arc<SerialDevice> {
        &self.serial
    }

    pub fn view(&self) -> &Arc<VmView> {
        &self.view
    }

    /// Presses the ACPI power button: the guest decides what to do (Linux's
    /// button driver reports it; the guest image powers off).
    pub fn press_power_button(&self) -> std::io::Result<()> {
        self.ged.notify(devices::ged::GED_EVENT_POWER_BUTTON)
    }

    /// This generation's exit notifier.
    pub fn exit(&self) -> &ExitNotifier {
        &self.exit
    }

    /// `desired_ram`: grows the guest's RAM towards `desired` bytes.
    pub fn resize_memory(
        &mut self,
        desired: u64,
        received: std::time::Instant,
    ) -> Result<crate::memory_hotplug::wait::MemoryPlan, MemoryResizeError> {
        match self.memory_hotplug.as_mut() {
            Some(m) => m.resize(desired, received),
            None => Err(MemoryResizeError::NoCapacity { desired }),
        }
    }

    /// Acts on the guest's memory hotplug answers; the RAM it has, when that
    /// differs from `last_size`.
    /// (Also after [`Vm::memory_tick`]: its rollbacks are seen here.)
    pub fn on_memory_events(&mut self, last_size: u64) -> Option<u64> {
        let m = self.memory_hotplug.as_mut()?;
        let size = m.on_guest_events(last_size);
        if m.take_moved() {
            // A resize waiting on the guest looks again.
            self.view.target.progress().bump();
        }
        size
    }

    /// Whether anything of this VM waits on time (vCPU or memory).
    pub fn needs_tick(&mut self) -> bool {
        self.manager.needs_tick() || self.memory_hotplug.as_ref().is_some_and(MemoryHotplug::needs_tick)
    }

    /// Main loop, periodic: memory offers and removals the guest did not
    /// answer in time.
    pub fn memory_tick(&mut self) {
        if let Some(m) = self.memory_hotplug.as_mut() {
            m.tick();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.manager.stop_all();
        // No vCPU writes a register any more: the devices let go of guest memory.
        self.virtio.reset_all();
    }
}
