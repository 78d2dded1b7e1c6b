//! The main thread: an event-manager loop that owns the VM, carries out API
//! requests, retires ejected vCPUs, enforces removal deadlines, feeds stdin
//! to the serial port and ends the process when the guest stops.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use api::{ApiRequest, ApiResponse};
use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{error, info, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api_bridge::{MainLoopReply, MainLoopRequest, VmState, VmmShared};
use crate::config::{SerialConfig, VmConfig};
use crate::cpu::manager::{ManagerError, ResizePlan};
use crate::exit::VmExit;
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
    api: Option<(Receiver<MainLoopRequest>, EventFd)>,
    timer: TimerFd,
    shared: Arc<VmmShared>,
    exit_code: Option<i32>,
    seccomp: Option<Filters>,
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
        Ok(Vmm {
            config: None,
            vm: None,
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            hotplug_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            term_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            api,
            timer,
            shared,
            exit_code: None,
            seccomp,
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
        self.config = Some(config);
        self.shared.set_state(VmState::Created);
    }

    /// Builds and starts the configured VM.
    pub fn boot(&mut self) -> Result<(), VmError> {
        let config = self.config.as_ref().expect("boot needs a config");
        let vm = Vm::create(config, &self.exit_evt, &self.hotplug_evt, self.seccomp.as_ref())?;
        self.shared.view.store(Some(vm.view().clone()));
        self.shared.set_state(VmState::Running);
        self.vm = Some(vm);
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
            }
            vm.view().set_ended(how);
            drop(vm);
            info!("VM stopped ({how:?})");
        }
        self.shared.set_state(if self.config.is_some() { VmState::Created } else { VmState::NotCreated });
    }

    /// Tears the VM down and boots it again with the vCPU count it had.
    fn reboot(&mut self) -> Result<(), VmError> {
        self.teardown(Ended::Rebooted);
        let r = self.boot();
        if let Err(e) = &r {
            error!("reboot failed: {e}");
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
            }
            Ok(n) => {
                if let Some(vm) = &self.vm {
                    let mut rest = &buf[..n];
                    // The UART FIFO is small: hand over what fits, drop the rest loudly.
                    match vm.serial().enqueue_input(rest) {
                        Ok(taken) => rest = &rest[taken..],
                        Err(e) => warn!("serial input: {e}"),
                    }
                    if !rest.is_empty() {
                        warn!("serial input FIFO full; dropped {} bytes", rest.len());
                    }
                }
            }
        }
    }

    fn on_api(&mut self) {
        let Some((rx, evt)) = &self.api else { return };
        let _ = evt.read();
        let pending: Vec<MainLoopRequest> = rx.try_iter().collect();
        for MainLoopRequest { request, reply } in pending {
            let answer = self.execute(request);
            let _ = reply.send(answer);
        }
    }

    fn execute(&mut self, request: ApiRequest) -> MainLoopReply {
        use MainLoopReply::Response;
        let conflict = |m: &str| Response(ApiResponse::error(409, m));
        match request {
            ApiRequest::VmCreate(json) => {
                if self.vm.is_some() {
                    return conflict("a VM is already running; shut it down first");
                }
                let config: VmConfig = match serde_json::from_value(json) {
                    Ok(c) => c,
                    Err(e) => return Response(ApiResponse::error(400, format!("invalid VM config: {e}"))),
                };
                let max = kvm_ioctls::Kvm::new().map(|k| k.get_max_vcpus() as u32).unwrap_or(u32::MAX);
                if let Err(e) = config.validate(max) {
                    return Response(ApiResponse::error(400, e.to_string()));
                }
                info!("VM configured over the API");
                self.set_config(config);
                Response(ApiResponse::no_content())
            }
            ApiRequest::VmBoot => {
                if self.vm.is_some() {
                    return conflict("the VM is already running");
                }
                if self.config.is_none() {
                    return conflict("no VM is configured; PUT vm.create first");
                }
                match self.boot() {
                    Ok(()) => Response(ApiResponse::no_content()),
                    Err(e @ VmError::Config(_)) => Response(ApiResponse::error(400, e.to_string())),
                    Err(e) => {
                        error!("VM boot failed: {e}");
                        self.teardown(Ended::ShutDown);
                        Response(ApiResponse::error(500, format!("boot failed: {e}")))
                    }
                }
            }
            ApiRequest::VmShutdown => {
                if self.vm.is_none() {
                    return conflict("the VM is not running");
                }
                self.teardown(Ended::ShutDown);
                Response(ApiResponse::no_content())
            }
            ApiRequest::VmReboot => {
                if self.vm.is_none() {
                    return conflict("the VM is not running");
                }
                match self.reboot() {
                    Ok(()) => Response(ApiResponse::no_content()),
                    Err(e) => Response(ApiResponse::error(500, format!("reboot failed: {e}"))),
                }
            }
            ApiRequest::VmPause | ApiRequest::VmResume => {
                let pause = matches!(request, ApiRequest::VmPause);
                let Some(vm) = self.vm.as_mut() else {
                    return conflict("the VM is not running");
                };
                let m = vm.manager();
                if m.is_paused() == pause {
                    return conflict(if pause { "the VM is already paused" } else { "the VM is not paused" });
                }
                if pause {
                    if let Err(e) = m.pause() {
                        return Response(ApiResponse::error(500, format!("pause failed: {e}")));
                    }
                    self.shared.set_state(VmState::Paused);
                } else {
                    m.resume();
                    self.shared.set_state(VmState::Running);
                }
                Response(ApiResponse::no_content())
            }
            ApiRequest::VmResize(req) => {
                let Some(vm) = self.vm.as_mut() else {
                    return conflict("the VM is not running; boot it first");
                };
                match vm.manager().resize(req.desired_vcpus) {
                    Ok(ResizePlan { error: Some(e), .. }) => Response(ApiResponse::error(500, e)),
                    Ok(plan) => MainLoopReply::Resized(plan, vm.view().clone()),
                    Err(e @ ManagerError::InvalidCount { .. }) => Response(ApiResponse::error(400, e.to_string())),
                    Err(e @ ManagerError::Paused) => Response(ApiResponse::error(409, e.to_string())),
                    Err(e) => {
                        error!("resize failed: {e}");
                        Response(ApiResponse::error(500, e.to_string()))
                    }
                }
            }
            ApiRequest::VmmShutdown => {
                info!("VMM shutdown requested over the API");
                self.teardown(Ended::ShutDown);
                self.exit_code = Some(0);
                Response(ApiResponse::no_content())
            }
            ApiRequest::VmmPing | ApiRequest::VmInfo => {
                Response(ApiResponse::error(500, "answered by the API thread, not the main loop"))
            }
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
        if self.wants_stdin() {
            // stdin may be a file or closed; then there is no console input.
            if ops.add(Events::new_raw(STDIN, EventSet::IN)).is_err() {
                info!("stdin cannot be polled; the guest console takes no input");
            }
        }
        if let Err(e) = self.timer.reset(TICK, Some(TICK)) {
            warn!("cannot arm the tick timer: {e}");
        }
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
        } else if fd == self.term_evt.as_raw_fd() {
            let _ = self.term_evt.read();
            info!("termination signal received; stopping the VM");
            self.teardown(Ended::ShutDown);
            self.exit_code = Some(0);
        } else if fd == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            if let Some(vm) = self.vm.as_mut() {
                vm.manager().tick();
            }
        } else if fd == STDIN {
            if events.event_set().intersects(EventSet::HANG_UP | EventSet::ERROR)
                && !events.event_set().contains(EventSet::IN)
            {
                let _ = ops.remove(events);
            } else {
                self.on_stdin(ops);
            }
        } else if self.api.as_ref().is_some_and(|(_, e)| e.as_raw_fd() == fd) {
            self.on_api();
        }
    }
}
