//! The thread an active device serves its queues on: an event-manager loop
//! over the queues' notification eventfds (KVM's ioeventfds), named after
//! the device (`virtio-blk0`) so `/proc` shows who is busy, under the
//! seccomp filter the VMM hands it.
//!
//! The thread is started with the device, when the VM is built, and lives
//! as long as the device: the guest's `DRIVER_OK` (which arrives in a vCPU's
//! MMIO exit, where no thread may be started) hands it the queues, a reset
//! takes them back and returns only once the thread has let go of them.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::ThreadInit;

/// What a device does when its queues are notified, and (for a device with
/// host-side connections, vsock) when one of its own fds is ready.
pub trait QueueHandler: Send + 'static {
    /// Queue `index` was notified (its eventfd is already drained).
    fn process_queue(&mut self, index: usize, fds: &mut dyn Watch);
    /// Once, when the queues are handed over: register the device's own fds.
    fn started(&mut self, _fds: &mut dyn Watch) {}
    /// A fd registered with `token` is ready (`events`).
    fn process_fd(&mut self, _token: u32, _events: EventSet, _fds: &mut dyn Watch) {}
    /// Once, when the queues are taken back: forget the fds that outlive
    /// the handler (net's TAP), so nothing fires for a handler gone.
    fn stopped(&mut self, _fds: &mut dyn Watch) {}
}

/// What a device may ask of the loop it runs in: watch or forget its own
/// fds. [`Fds`] on the worker; tests and fuzz targets have their own.
pub trait Watch {
    /// Watches `fd` for `events`; `token` (at least [`FIRST_FD_TOKEN`]) names it.
    fn watch(&mut self, fd: i32, token: u32, events: EventSet) -> bool;
    /// Stops watching `fd`.
    fn forget(&mut self, fd: i32);
}

/// The first token a device's own fds may use: queue indices and the
/// worker's control event sit below it.
pub const FIRST_FD_TOKEN: u32 = 0x1000;

/// A device's handle on its worker's event loop: watch or forget its own fds.
pub struct Fds<'a, 'b> {
    ops: &'a mut EventOps<'b>,
}

impl Watch for Fds<'_, '_> {
    fn watch(&mut self, fd: i32, token: u32, events: EventSet) -> bool {
        debug_assert!(token >= FIRST_FD_TOKEN && token != CONTROL);
        let _ = self.ops.remove(Events::empty_raw(fd));
        self.ops.add(Events::with_data_raw(fd, token, events)).is_ok()
    }

    fn forget(&mut self, fd: i32) {
        let _ = self.ops.remove(Events::empty_raw(fd));
    }
}

/// How long a reset waits for the worker to let go of the queues.
const STOP_LIMIT: Duration = Duration::from_secs(5);
const CONTROL: u32 = u32::MAX;

/// Work to do once on the worker thread, under its seccomp filter.
type Job = Box<dyn FnOnce() + Send>;

enum Control<H> {
    Start(H, Vec<Arc<EventFd>>),
    Run(Job),
    Stop(SyncSender<()>),
    Exit,
}

struct Subscriber<H> {
    control: Receiver<Control<H>>,
    wake: EventFd,
    serving: Option<(H, Vec<Arc<EventFd>>)>,
    exit: bool,
    name: String,
}

impl<H: QueueHandler> Subscriber<H> {
    fn on_control(&mut self, ops: &mut EventOps) {
        let _ = self.wake.read();
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::Start(mut handler, notifiers) => {
                    self.stop_serving(ops);
                    for (i, n) in notifiers.iter().enumerate() {
                        if let Err(e) = ops.add(Events::with_data(n.as_ref(), i as u32, EventSet::IN)) {
                            log::error!("{}: cannot watch queue {i}: {e:?}", self.name);
                        }
                    }
                    let mut fds = Fds { ops };
                    handler.started(&mut fds);
                    // What the guest queued before the thread watched.
                    for i in 0..notifiers.len() {
                        handler.process_queue(i, &mut fds);
                    }
                    self.serving = Some((handler, notifiers));
                }
                Control::Run(job) => job(),
                Control::Stop(ack) => {
                    self.stop_serving(ops);
                    let _ = ack.send(());
                }
                Control::Exit => {
                    self.stop_serving(ops);
                    self.exit = true;
                }
            }
        }
    }

    fn stop_serving(&mut self, ops: &mut EventOps) {
        if let Some((mut handler, notifiers)) = self.serving.take() {
            handler.stopped(&mut Fds { ops });
            for n in &notifiers {
                let _ = ops.remove(Events::empty(n.as_ref()));
            }
        }
    }
}

impl<H: QueueHandler> MutEventSubscriber for Subscriber<H> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.wake, CONTROL, EventSet::IN)) {
            log::error!("{}: cannot watch its control event: {e:?}", self.name);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            CONTROL => self.on_control(ops),
            t if t >= FIRST_FD_TOKEN => {
                let Some((handler, _)) = self.serving.as_mut() else { return };
                handler.process_fd(t, events.event_set(), &mut Fds { ops });
            }
            i => {
                let Some((handler, notifiers)) = self.serving.as_mut() else { return };
                let Some(n) = notifiers.get(i as usize) else { return };
                let _ = n.read();
                handler.process_queue(i as usize, &mut Fds { ops });
            }
        }
    }
}

pub struct Worker<H> {
    control: Mutex<Sender<Control<H>>>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
    name: String,
}

impl<H: QueueHandler> Worker<H> {
    /// Starts `name`'s thread, idle until [`Worker::start`].
    pub fn spawn(name: &str, thread_init: Option<ThreadInit>) -> std::io::Result<Worker<H>> {
        let (tx, rx) = channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let sub = Subscriber { control: rx, wake: wake.try_clone()?, serving: None, exit: false, name: name.into() };
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new().name(name.chars().take(15).collect()).spawn(move || {
            if let Some(init) = thread_init {
                if let Err(e) = init() {
                    log::error!("{thread_name}: thread setup failed ({e}); the device does not serve");
                    return;
                }
            }
            let mut em = match EventManager::<Subscriber<H>>::new() {
                Ok(em) => em,
                Err(e) => {
                    log::error!("{thread_name}: event manager: {e:?}; the device does not serve");
                    return;
                }
            };
            let id = em.add_subscriber(sub);
            loop {
                if let Err(e) = em.run() {
                    log::error!("{thread_name}: event loop: {e:?}; the device stops serving");
                    return;
                }
                if em.subscriber_mut(id).map(|s| s.exit).unwrap_or(true) {
                    return;
                }
            }
        })?;
        Ok(Worker { control: Mutex::new(tx), wake, thread: Some(thread), name: name.to_string() })
    }

    fn send(&self, c: Control<H>) -> bool {
        let sent = self.control.lock().unwrap_or_else(|e| e.into_inner()).send(c).is_ok();
        sent && self.wake.write(1).is_ok()
    }

    /// Hands the thread a handler and its queues' notifiers.
    pub fn start(&self, handler: H, notifiers: Vec<Arc<EventFd>>) -> std::io::Result<()> {
        if self.send(Control::Start(handler, notifiers)) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{}: the worker thread is gone", self.name)))
        }
    }

    /// Runs `job` on the worker thread, between events: for set-up that its
    /// seccomp filter allows and the caller's does not (virtio-fs connects to
    /// its vhost-user backend there).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        if self.send(Control::Run(Box::new(job))) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("{}: the worker thread is gone", self.name)))
        }
    }

    /// Takes the queues back; returns once the thread no longer uses them
    /// (false if it did not answer within a bound, or is gone).
    pub fn stop(&self) -> bool {
        let (ack, done) = sync_channel(1);
        if !self.send(Control::Stop(ack)) {
            return false;
        }
        let stopped = done.recv_timeout(STOP_LIMIT).is_ok();
        if !stopped {
            log::error!("{}: the worker did not let go of its queues within {STOP_LIMIT:?}", self.name);
        }
        stopped
    }
}

impl<H> Drop for Worker<H> {
    fn drop(&mut self) {
        let sent = self.control.lock().unwrap_or_else(|e| e.into_inner()).send(Control::Exit).is_ok();
        if let Some(thread) = self.thread.take() {
            if sent && self.wake.write(1).is_ok() {
                let _ = thread.join();
            }
        }
    }
}
