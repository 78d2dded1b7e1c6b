//! virtio-fs on its worker thread while the guest has it active.
//!
//! With a live backend the backend serves the rings itself: it reads the
//! guest's notifications from KVM's ioeventfds directly and raises the
//! guest's interrupt through the device's irqfd directly, so a request
//! never wakes lithe. virtio-mmio's `InterruptStatus` must say why an
//! interrupt came, and lithe does not see these: the used-ring bit is made
//! sticky while the backend serves (a spurious used-ring interrupt is
//! harmless, a missing bit would lose one). Without an irqfd (tests), lithe
//! relays the backend's signals itself. It also watches the session's
//! socket: the backend sends nothing unasked, so the socket becoming
//! readable means it closed.
//!
//! When the backend is gone, lithe takes the rings over and answers every
//! request with `EIO` ([`super::fail`]).

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, Ring};
use super::{fail, State};
use crate::guest_warn;
use crate::virtio::interrupt::INT_VRING;
use crate::virtio::worker::{QueueHandler, Watch, FIRST_FD_TOKEN};
use crate::virtio::{GuestMemoryHandle, VirtioInterrupt};

/// Tokens: the backend's call eventfds, its socket, the guest's kicks
/// (watched by lithe only once the backend is gone).
const CALL: u32 = FIRST_FD_TOKEN;
const SOCKET: u32 = FIRST_FD_TOKEN + 0x100;
const KICK: u32 = FIRST_FD_TOKEN + 0x200;

pub struct Handler {
    pub name: String,
    /// `None` once the backend failed.
    pub backend: Option<Arc<Backend>>,
    pub mem: GuestMemoryHandle,
    pub queues: Vec<Queue>,
    pub kicks: Vec<Arc<EventFd>>,
    pub calls: Arc<Vec<EventFd>>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub features: u64,
    pub state: Arc<State>,
}

impl Handler {
    /// The rings; the backend signals `direct` (the irqfd) if given, else
    /// each queue's call eventfd, which lithe relays.
    fn rings<'a>(&'a self, direct: Option<&'a EventFd>) -> Vec<Ring<'a>> {
        self.queues
            .iter()
            .zip(self.kicks.iter().zip(self.calls.iter()))
            .map(|(q, (kick, call))| Ring {
                size: q.size(),
                max_size: q.max_size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                base: q.next_avail(),
                call: direct.unwrap_or(call),
                kick,
            })
            .collect()
    }

    fn forget_backend(&mut self, fds: &mut dyn Watch) {
        if let Some(b) = self.backend.take() {
            fds.forget(b.socket_fd());
            for c in self.calls.iter() {
                fds.forget(c.as_raw_fd());
            }
        }
    }

    /// The backend is gone (or never took the rings): lithe answers from
    /// where the backend's used rings stand.
    fn fail_over(&mut self, why: &str, fds: &mut dyn Watch) {
        self.state.fail(&self.name, why);
        self.forget_backend(fds);
        let mem = self.mem.memory();
        let event_idx = self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            match q.used_idx(&*mem, Ordering::Acquire) {
                Ok(used) => {
                    q.set_next_avail(used.0);
                    q.set_next_used(used.0);
                }
                Err(e) => guest_warn!("{}: queue {i}'s used ring is not readable: {e}", self.name),
            }
        }
        for (i, k) in self.kicks.iter().enumerate() {
            if !fds.watch(k.as_raw_fd(), KICK + i as u32, EventSet::IN) {
                log::error!("{}: cannot watch queue {i}'s notifications", self.name);
            }
        }
        for i in 0..self.queues.len() {
            self.answer_failed(i);
        }
    }

    /// Answers queue `i`'s pending requests with `EIO`, until the guest
    /// has none left after notifications are on again (with event indexes,
    /// that also tells the guest where to kick next).
    fn answer_failed(&mut self, i: usize) {
        let mem = self.mem.memory();
        let Some(q) = self.queues.get_mut(i) else { return };
        let mut used = false;
        // Whether the last pop came back empty: "more is available" right
        // after an empty pop is a ring whose index lies, not more work.
        let mut empty = false;
        loop {
            let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                match q.enable_notification(&*mem) {
                    Ok(true) if !empty => {
                        empty = true;
                        continue;
                    }
                    Ok(true) => guest_warn!("{}: queue {i}'s available index is out of range", self.name),
                    Ok(false) => {}
                    Err(e) => guest_warn!("{}: queue {i}'s rings are not usable: {e}", self.name),
                }
                break;
            };
            empty = false;
            let head = chain.head_index();
            let len = match fail::answer_eio(&mem, chain) {
                Ok(n) => n,
                Err(why) => {
                    guest_warn!("{}: queue {i}: {why}", self.name);
                    0
                }
            };
            self.state.failed_requests.fetch_add(1, Ordering::Relaxed);
            if q.add_used(&*mem, head, len).is_err() {
                guest_warn!("{}: queue {i}'s used ring is not writable", self.name);
                break;
            }
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
    }

    /// Whether the socket's readiness means the backend closed it: a hang-up,
    /// an error, end of file, or a message it had no reason to send.
    fn backend_closed(&self, events: EventSet) -> bool {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
            return true;
        }
        let Some(b) = &self.backend else { return false };
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer on the session's socket,
        // which `b` keeps open.
        let n =
            unsafe { libc::recv(b.socket_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        // -1 with EAGAIN: readiness that was already consumed; not a close.
        n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }
}

impl QueueHandler for Handler {
    fn started(&mut self, fds: &mut dyn Watch) {
        if let Some(why) = self.state.failure() {
            return self.fail_over(&why, fds);
        }
        let Some(backend) = self.backend.clone() else { return };
        let mem = self.mem.memory();
        let interrupt = self.interrupt.clone();
        let direct = interrupt.irqfd();
        if direct.is_some() {
            interrupt.set_sticky(INT_VRING);
        }
        if let Err(e) = backend.start(&mem, self.features, &self.rings(direct)) {
            return self.fail_over(&format!("setting up the rings: {e}"), fds);
        }
        drop(mem);
        self.state.direct.store(direct.is_some(), Ordering::Relaxed);
        if direct.is_none() {
            for (i, c) in self.calls.iter().enumerate() {
                if !fds.watch(c.as_raw_fd(), CALL + i as u32, EventSet::IN) {
                    return self.fail_over(&format!("cannot watch queue {i}'s used signal"), fds);
                }
            }
        }
        if !fds.watch(backend.socket_fd(), SOCKET, EventSet::IN) {
            return self.fail_over("cannot watch the backend's socket", fds);
        }
        self.state.serving.store(true, Ordering::Relaxed);
    }

    fn process_queue(&mut self, index: usize, _fds: &mut dyn Watch) {
        // Only once the backend is gone does lithe serve the queues.
        if self.backend.is_none() {
            self.answer_failed(index);
        }
    }

    fn process_fd(&mut self, token: u32, events: EventSet, fds: &mut dyn Watch) {
        match token {
            SOCKET => {
                if self.backend_closed(events) {
                    self.fail_over("the backend closed its socket", fds);
                }
            }
            t if t >= KICK => {
                let i = (t - KICK) as usize;
                if let Some(k) = self.kicks.get(i) {
                    let _ = k.read();
                }
                self.process_queue(i, fds);
            }
            t => {
                let i = (t - CALL) as usize;
                if let Some(c) = self.calls.get(i) {
                    let _ = c.read();
                }
                self.state.relayed.fetch_add(1, Ordering::Relaxed);
                self.interrupt.signal_used();
            }
        }
    }

    fn stopped(&mut self, fds: &mut dyn Watch) {
        self.state.serving.store(false, Ordering::Relaxed);
        for k in &self.kicks {
            fds.forget(k.as_raw_fd());
        }
        if let Some(b) = self.backend.clone() {
            self.forget_backend(fds);
            if let Err(e) = b.stop() {
                self.state.fail(&self.name, &format!("stopping the rings: {e}"));
            }
        }
    }
}
