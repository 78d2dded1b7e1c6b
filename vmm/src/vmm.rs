//! The main thread: an event-manager loop that owns the VM, carries out API
//! requests, retires ejected vCPUs, enforces removal deadlines, feeds stdin
//! to the serial port and ends the process when the guest stops.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, error, info, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api_bridge::{MainLoopRequest, Reply, VmState, VmmShared};
use crate::config::{KvmLimits, NetConfig, SerialConfig, VmConfig};
use crate::events::emit;
use crate::exit::VmExit;
use crate::resize::{self, ResizeRequest};
use crate::rpc::{ActionError, Command, Refused, TapFds};
use crate::seccomp::Filters;
use crate::vm::{Ended, Vm, VmError};

const TICK: Duration = Duration::from_millis(250);
const STDIN: i32 = 0;

pub struct Vmm {
    config: Option<VmConfig>,
    vm: Option<Vm>,
    /// Wakes the loop when the running VM generation stops.
    exit_evt: EventFd,
    hotplug_evt: EventFd,
    term_evt: EventFd,
    /// The guest read all queued console input: queue more.
    input_room: EventFd,
    /// Console input read from stdin that the UART's FIFO had no room for
    /// yet. While it is not empty, stdin is not read (the terminal or pipe
    /// holds the rest), so nothing typed is dropped.
    stdin_pending: Vec<u8>,
    /// stdin is removed from the loop: `Paused` while input waits for room,
    /// `Closed` for good (end of file or an error).
    stdin_state: StdinState,
    api: Option<(Receiver<MainLoopRequest>, EventFd)>,
    /// Armed only while something waits on time ([`Vm::needs_tick`], or
    /// console input held across a reboot): an idle VM costs no wake-ups.
    timer: TimerFd,
    ticking: bool,
    shared: Arc<VmmShared>,
    exit_code: Option<i32>,
    seccomp: Option<Filters>,
    /// TAP fds handed over with `vm.add-net`, open while the configuration
    /// names them (each build of the VM takes a duplicate).
    tap_fds: Vec<TapFds>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinState {
    Watched,
    Paused,
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("creating event fds: {0}")]
    Io(#[from] std::io::Error),
    #[error("creating the tick timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
}

impl Vmm {
    /// `seccomp`: filters for the vCPU threads of every VM this VMM boots.
    pub fn new(
        shared: Arc<VmmShared>,
        api: Option<(Receiver<MainLoopRequest>, EventFd)>,
        seccomp: Option<Filters>,
    ) -> Result<Vmm, VmmError> {
        let timer = TimerFd::new().map_err(VmmError::Timer)?;
        // Non-blocking: a timer disarmed while its expiry sits in the same
        // epoll batch must not block the loop in `wait`. vmm-sys-util's
        // TimerFd has no flag for it.
        // SAFETY: fcntl on an fd this TimerFd owns and keeps open; only the
        // status flags change.
        let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(VmmError::Io(std::io::Error::last_os_error()));
        }
        Ok(Vmm {
            config: None,
            vm: None,
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            hotplug_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            term_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            input_room: EventFd::new(libc::EFD_NONBLOCK)?,
            stdin_pending: Vec::new(),
            stdin_state: StdinState::Watched,
            api,
            timer,
            ticking: false,
            shared,
            exit_code: None,
            seccomp,
            tap_fds: Vec::new(),
        })
    }

    /// Makes SIGINT/SIGTERM end the main loop cleanly.
    pub fn handle_termination_signals(&self) -> Result<(), vmm_sys_util::errno::Error> {
        crate::signals::install(&self.term_evt)
    }

    /// Set when the process should end, with its exit code.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    pub fn set_config(&mut self, config: VmConfig) {
        self.shared.config.store(Some(Arc::new(config.clone())));
        self.config = Some(config);
        self.shared.set_state(VmState::Created);
    }

    /// Builds and starts the configured VM.
    pub fn boot(&mut self) -> Result<(), VmError> {
        let Some(config) = self.config.as_ref() else {
            return Err(VmError::NotConfigured);
        };
        emit("vm", "booting", &[]);
        let vm = Vm::create(config, &self.exit_evt, &self.hotplug_evt, &self.input_room, self.seccomp.as_ref())?;
        self.shared.view.store(Some(vm.view().clone()));
        self.shared.set_state(VmState::Running);
        self.vm = Some(vm);
        emit("vm", "booted", &[]);
        Ok(())
    }

    fn teardown(&mut self, how: Ended) {
        self.shared.view.store(None);
        if let Some(vm) = self.vm.take() {
            // The next boot keeps the vCPU count the guest had (as Cloud
            // Hypervisor does): the target follows every resize and rollback.
            let desired = vm.view().target.desired();
            if let Some(c) = self.config.as_mut() {
                c.cpus.boot_vcpus = desired;
                self.shared.config.store(Some(Arc::new(c.clone())));
            }
            vm.view().set_ended(how);
            drop(vm);
            info!("VM stopped ({how:?})");
            if how == Ended::ShutDown {
                emit("vm", "shutdown", &[]);
            }
        }
        self.shared.set_state(if self.config.is_some() { VmState::Created } else { VmState::NotCreated });
    }

    /// Tears the VM down and boots it again with the vCPU count it had.
    fn reboot(&mut self) -> Result<(), VmError> {
        emit("vm", "rebooting", &[]);
        self.teardown(Ended::Rebooted);
        let r = self.boot();
        match &r {
            Ok(()) => emit("vm", "rebooted", &[]),
            Err(e) => error!("reboot failed: {e}"),
        }
        r
    }

    fn on_vm_exit(&mut self) {
        let _ = self.exit_evt.read();
        let Some(exit) = self.vm.as_ref().and_then(|vm| vm.exit().take()) else { return };
        let code = match &exit {
            VmExit::Shutdown => {
                info!("guest powered off");
                0
            }
            VmExit::Reboot => {
                info!("guest reset; booting the VM again");
                if self.reboot().is_ok() {
                    return;
                }
                1
            }
            VmExit::VcpuError { id, reason } => {
                error!("vCPU {id} failed: {reason}");
                1
            }
        };
        self.teardown(Ended::ShutDown);
        self.exit_code = Some(code);
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(Events::empty_raw(STDIN));
                self.stdin_state = StdinState::Closed;
            }
            // No VM, no console: what is typed has nowhere to go.
            Ok(_) if self.vm.is_none() => {}
            Ok(n) => {
                self.stdin_pending.extend_from_slice(&buf[..n]);
                self.feed_console(ops);
            }
        }
    }

    /// Hands pending console input to the UART, as much as its FIFO takes,
    /// and reads stdin again only once all of it went in.
    fn feed_console(&mut self, ops: &mut EventOps) {
        match (&self.vm, self.stdin_pending.is_empty()) {
            (_, true) => {}
            // The VM is gone (shut down or deleted): so is its console.
            (None, false) => self.stdin_pending.clear(),
            (Some(vm), false) => match vm.serial().enqueue_input(&self.stdin_pending) {
                Ok(taken) => drop(self.stdin_pending.drain(..taken)),
                Err(e) => {
                    warn!("serial input: {e}; {} bytes dropped", self.stdin_pending.len());
                    self.stdin_pending.clear();
                }
            },
        }
        match (self.stdin_state, self.stdin_pending.is_empty()) {
            (StdinState::Watched, false) => {
                if let Err(e) = ops.remove(Events::empty_raw(STDIN)) {
                    warn!("console input: cannot pause stdin: {e:?}");
                }
                debug!("console input: {} bytes wait for room in the UART; stdin paused", self.stdin_pending.len());
                self.stdin_state = StdinState::Paused;
            }
            (StdinState::Paused, true) => match ops.add(Events::new_raw(STDIN, EventSet::IN)) {
                Ok(()) => {
                    debug!("console input: all handed over; reading stdin again");
                    self.stdin_state = StdinState::Watched;
                }
                Err(e) => {
                    warn!("console input: cannot watch stdin again ({e:?}); the console takes no more input");
                    self.stdin_state = StdinState::Closed;
                }
            },
            _ => {}
        }
    }

    fn on_api(&mut self) {
        let Some((rx, evt)) = &self.api else { return };
        let _ = evt.read();
        let pending: Vec<MainLoopRequest> = rx.try_iter().collect();
        for MainLoopRequest { command, received, reply } in pending {
            let answer = self.execute(command, received);
            let _ = reply.send(answer);
        }
    }

    /// Carries out one command on the main loop.
    fn execute(&mut self, command: Command, received: std::time::Instant) -> Result<Reply, ActionError> {
        match command {
            Command::CreateVm(config) => self.create(*config),
            Command::BootVm => self.boot_action(),
            Command::AddNet(net, fds) => self.add_net(*net, fds),
            Command::DeleteVm => {
                // Cloud Hypervisor: shut the VM down if it runs, forget its config.
                if self.vm.is_some() {
                    self.teardown(Ended::ShutDown);
                }
                if self.config.take().is_some() {
                    emit("vm", "deleted", &[]);
                }
                self.tap_fds.clear();
                self.shared.config.store(None);
                self.shared.set_state(VmState::NotCreated);
                Ok(Reply::Done)
            }
            Command::ShutdownVm => {
                self.running()?;
                self.teardown(Ended::ShutDown);
                Ok(Reply::Done)
            }
            Command::RebootVm => {
                self.running()?;
                self.reboot().map_err(ActionError::Reboot)?;
                Ok(Reply::Done)
            }
            Command::PauseVm => self.pause(true),
            Command::ResumeVm => self.pause(false),
            Command::PowerButton => {
                self.running()?.press_power_button().map_err(ActionError::PowerButton)?;
                info!("power button pressed");
                emit("vm", "power-button", &[]);
                Ok(Reply::Done)
            }
            Command::Resize(req) => self.resize(&req, received),
            Command::ShutdownVmm => {
                info!("VMM shutdown requested over the API");
                self.teardown(Ended::ShutDown);
                emit("vmm", "shutdown", &[]);
                self.exit_code = Some(0);
                Ok(Reply::Done)
            }
        }
    }

    /// The running VM, or why there is none.
    fn running(&mut self) -> Result<&mut Vm, ActionError> {
        match (&mut self.vm, &self.config) {
            (Some(vm), _) => Ok(vm),
            (None, Some(_)) => Err(ActionError::NotBooted),
            (None, None) => Err(ActionError::NotCreated),
        }
    }

    fn create(&mut self, config: Result<VmConfig, Refused>) -> Result<Reply, ActionError> {
        if self.vm.is_some() {
            return Err(ActionError::AlreadyBooted);
        }
        if self.config.is_some() {
            return Err(ActionError::AlreadyCreated);
        }
        let config = config?;
        config.validate(KvmLimits::probe())?;
        info!("VM configured over the API");
        self.set_config(config);
        Ok(Reply::Done)
    }

    /// `vm.add-net` before boot, as Cloud Hypervisor takes it then: the
    /// device joins the configuration. With fds, the first is the TAP (one
    /// queue pair; more fds would be more pairs, and are closed).
    fn add_net(&mut self, net: Result<NetConfig, Refused>, fds: TapFds) -> Result<Reply, ActionError> {
        if self.vm.is_some() {
            return Err(ActionError::AlreadyBooted);
        }
        let Some(config) = self.config.as_ref() else {
            return Err(ActionError::NotCreated);
        };
        let mut net = net?;
        if let Some(fd) = fds.0.first() {
            net.tap = None;
            net.fd = Some(fd.as_raw_fd());
        }
        let mut next = config.clone();
        next.devices.net.push(net);
        next.validate(KvmLimits::probe())?;
        info!(
            "network device {} added (TAP {})",
            next.devices.net.len() - 1,
            match (&next.devices.net.last().and_then(|n| n.tap.clone()), fds.0.len()) {
                (Some(name), _) => name.clone(),
                (None, n) => format!("from {n} fd(s) sent with the request"),
            }
        );
        if !fds.0.is_empty() {
            self.tap_fds.push(fds);
        }
        self.set_config(next);
        Ok(Reply::Done)
    }

    fn boot_action(&mut self) -> Result<Reply, ActionError> {
        if self.vm.is_some() {
            return Err(ActionError::AlreadyBooted);
        }
        if self.config.is_none() {
            return Err(ActionError::NotCreated);
        }
        match self.boot() {
            Ok(()) => Ok(Reply::Done),
            Err(VmError::Config(source)) => Err(ActionError::Config { source }),
            Err(e) => {
                error!("VM boot failed: {e}");
                self.teardown(Ended::ShutDown);
                Err(ActionError::Boot(e))
            }
        }
    }

    fn pause(&mut self, pause: bool) -> Result<Reply, ActionError> {
        let vm = self.running()?;
        let m = vm.manager();
        if m.is_paused() == pause {
            return Err(if pause { ActionError::AlreadyPaused } else { ActionError::NotPaused });
        }
        if pause {
            emit("vm", "pausing", &[]);
            m.pause().map_err(ActionError::Pause)?;
            self.shared.set_state(VmState::Paused);
            emit("vm", "paused", &[]);
        } else {
            emit("vm", "resuming", &[]);
            m.resume();
            self.shared.set_state(VmState::Running);
            emit("vm", "resumed", &[]);
        }
        Ok(Reply::Done)
    }

    /// A resize of the running VM ([`resize::start`]), or, as Cloud
    /// Hypervisor allows, of the configured one before it boots
    /// ([`resize::before_boot`]).
    fn resize(&mut self, req: &ResizeRequest, received: std::time::Instant) -> Result<Reply, ActionError> {
        let memory = match req.ram {
            Some(ram) => self.resize_memory(ram, received)?,
            None => None,
        };
        let Some(want) = &req.want else {
            // No vCPU change: done, as Cloud Hypervisor answers it (a memory
            // change is under way; a client may wait for it).
            return match (&self.config, memory, &self.vm) {
                (None, ..) => Err(ActionError::NotCreated),
                (Some(_), Some(plan), Some(vm)) => Ok(Reply::Resizing(None, Some(plan), vm.view().clone())),
                (Some(_), ..) => Ok(Reply::Done),
            };
        };
        if let Some(vm) = self.vm.as_mut() {
            let field = match want {
                resize::Want::Count(n) => ("desired_vcpus", n.to_string()),
                resize::Want::Ids(ids) => ("desired_vcpu_ids", format!("{ids:?}")),
            };
            emit("vm", "resizing", &[field]);
            let plan = resize::start(vm.manager(), want, received).inspect_err(|e| {
                if e.is_vmm() {
                    error!("resize failed: {e}");
                }
            })?;
            return Ok(Reply::Resizing(Some(plan), memory, vm.view().clone()));
        }
        let Some(config) = self.config.as_mut() else { return Err(ActionError::NotCreated) };
        resize::before_boot(&mut config.cpus, want, KvmLimits::probe())?;
        self.shared.config.store(Some(Arc::new(config.clone())));
        Ok(Reply::Done)
    }

    /// `desired_ram`: the running VM grows (answered at once, as Cloud
    /// Hypervisor does; `memory.size` follows when the guest takes it), or
    /// the configured VM will boot with that much.
    fn resize_memory(
        &mut self,
        ram: u64,
        received: std::time::Instant,
    ) -> Result<Option<crate::memory_hotplug::wait::MemoryPlan>, ActionError> {
        if let Some(vm) = self.vm.as_mut() {
            emit("vm", "resizing", &[("desired_ram", ram.to_string())]);
            return vm.resize_memory(ram, received).map(Some).map_err(|e| {
                if e.is_vmm() {
                    error!("memory resize failed: {e}");
                }
                ActionError::Resize(resize::ResizeError::Memory(e))
            });
        }
        let Some(config) = self.config.as_mut() else { return Err(ActionError::NotCreated) };
        crate::config::validate_memory(ram).map_err(|e| {
            ActionError::Resize(resize::ResizeError::Memory(crate::memory_hotplug::MemoryResizeError::Failed(
                e.to_string(),
            )))
        })?;
        config.memory.size = ram;
        self.shared.config.store(Some(Arc::new(config.clone())));
        Ok(None)
    }

    /// The guest answered a memory hotplug event: `memory.size` follows.
    fn on_memory_events(&mut self) {
        let Some(vm) = self.vm.as_mut() else { return };
        let Some(config) = self.config.as_mut() else { return };
        if let Some(size) = vm.on_memory_events(config.memory.size) {
            info!("memory: the guest has {} MiB", size >> 20);
            // The room left shrinks as much as the RAM grows: a reboot boots
            // `size` with the same ceiling.
            let room = config.memory.hotplug_size.unwrap_or(0);
            let room = (room + config.memory.size).saturating_sub(size);
            config.memory.hotplug_size = (room > 0).then_some(room);
            config.memory.size = size;
            self.shared.config.store(Some(Arc::new(config.clone())));
        }
    }

    /// Arms the tick while something waits on time and disarms it when
    /// nothing does. Everything that sets a deadline runs on this loop, so
    /// looking after each event is enough.
    fn rearm(&mut self) {
        let busy = !self.stdin_pending.is_empty() || self.vm.as_mut().is_some_and(Vm::needs_tick);
        if busy == self.ticking {
            return;
        }
        let done = match busy {
            true => self.timer.reset(TICK, Some(TICK)),
            false => self.timer.clear(),
        };
        match done {
            Ok(()) => {
                debug!("tick timer {}", if busy { "armed" } else { "asleep: nothing waits on time" });
                self.ticking = busy;
            }
            Err(e) => warn!("cannot {} the tick timer: {e}", if busy { "arm" } else { "disarm" }),
        }
    }

    fn wants_stdin(&self) -> bool {
        // Only a console on our stdout reads our stdin.
        !matches!(self.config.as_ref().map(|c| &c.serial), Some(SerialConfig::Off | SerialConfig::File { .. }))
    }
}

impl MutEventSubscriber for Vmm {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: i32, what: &str| {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("cannot watch {what}: {e:?}");
            }
        };
        add(self.exit_evt.as_raw_fd(), "VM exits");
        add(self.hotplug_evt.as_raw_fd(), "guest ejects");
        add(self.timer.as_raw_fd(), "the tick timer");
        add(self.term_evt.as_raw_fd(), "termination signals");
        if let Some((_, evt)) = &self.api {
            add(evt.as_raw_fd(), "API requests");
        }
        add(self.input_room.as_raw_fd(), "console input room");
        if self.wants_stdin() {
            // stdin may be a file or closed; then there is no console input.
            if ops.add(Events::new_raw(STDIN, EventSet::IN)).is_err() {
                info!("stdin cannot be polled; the guest console takes no input");
                self.stdin_state = StdinState::Closed;
            }
        } else {
            self.stdin_state = StdinState::Closed;
        }
        self.rearm();
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit_evt.as_raw_fd() {
            self.on_vm_exit();
        } else if fd == self.hotplug_evt.as_raw_fd() {
            let _ = self.hotplug_evt.read();
            if let Some(vm) = self.vm.as_mut() {
                vm.manager().on_guest_events();
            }
            self.on_memory_events();
        } else if fd == self.term_evt.as_raw_fd() {
            let _ = self.term_evt.read();
            info!("termination signal received; stopping the VM");
            self.teardown(Ended::ShutDown);
            self.exit_code = Some(0);
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            if let Some(vm) = self.vm.as_mut() {
                vm.manager().tick();
                vm.memory_tick();
            }
            self.on_memory_events();
            // Input held across a reboot has a fresh, empty FIFO to go to.
            self.feed_console(ops);
        } else if fd == self.input_room.as_raw_fd() {
            let _ = self.input_room.read();
            self.feed_console(ops);
        } else if fd == STDIN {
            if events.event_set().intersects(EventSet::HANG_UP | EventSet::ERROR)
                && !events.event_set().contains(EventSet::IN)
            {
                let _ = ops.remove(events);
                self.stdin_state = StdinState::Closed;
            } else {
                self.on_stdin(ops);
            }
        } else if self.api.as_ref().is_some_and(|(_, e)| e.as_raw_fd() == fd) {
            self.on_api();
        }
        self.rearm();
    }
}
