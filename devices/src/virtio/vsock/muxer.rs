//! Hybrid vsock, the host side (Firecracker's protocol, which Cloud
//! Hypervisor and Kata's agent client use): guest stream connections mapped
//! to Unix sockets.
//!
//! - host → guest: a host process connects to the device's socket, writes
//!   `CONNECT <port>\n`; lithe asks the guest (`REQUEST`), and on its
//!   `RESPONSE` writes `OK <host-port>\n`; bytes then flow both ways;
//! - guest → host: a guest connect to CID 2, port P is a connection to the
//!   Unix socket `<socket>_<P>`.
//!
//! Flow control is virtio-vsock's credit: lithe sends the guest no more
//! than the guest said it can hold (`buf_alloc` − in flight), and tells the
//! guest how much it may send (`BUF_ALLOC`, `fwd_cnt` as bytes reach the
//! host socket). A peer that vanishes resets the connection on the other
//! side. Packets are parsed and written by rust-vmm's `virtio-vsock`; the
//! connection table is lithe's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::guest_warn;
use crate::virtio::worker::{QueueHandler, Watch, FIRST_FD_TOKEN};
use crate::virtio::VirtioInterrupt;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_BOTH: u32 = 3;

/// What each connection may hold from the guest before the host reads it.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest packet payload, either way.
const MAX_PKT: u32 = 64 * 1024;
const LISTENER: u32 = FIRST_FD_TOKEN;
const RX: usize = 0;
const TX: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host process connected; its `CONNECT <port>` line is being read.
    AwaitingConnect,
    /// The guest was sent a `REQUEST`.
    Requesting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    local_port: u32,
    peer_port: u32,
    line: Vec<u8>,
    /// Read from the host socket, not yet in the guest's RX buffers.
    from_host: Vec<u8>,
    /// From the guest, not yet written to the host socket.
    to_host: Vec<u8>,
    /// lithe's own bytes for the host socket (the `OK` line), written
    /// before the guest's and not counted as the guest's.
    preamble: Vec<u8>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest, and bytes of the guest's written to the host.
    rx_cnt: u32,
    fwd_cnt: u32,
    announced_fwd: u32,
    host_eof: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Conn {
        Conn {
            stream,
            state,
            local_port,
            peer_port,
            line: Vec::new(),
            from_host: Vec::new(),
            to_host: Vec::new(),
            preamble: Vec::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            announced_fwd: 0,
            host_eof: false,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// A packet for the guest that carries no data.
#[derive(Debug, Clone, Copy)]
struct Ctl {
    op: u16,
    local_port: u32,
    peer_port: u32,
    flags: u32,
    fwd_cnt: u32,
}

#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub resets: AtomicU64,
}

pub struct Muxer {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    guest_cid: u64,
    listener: Arc<UnixListener>,
    path: PathBuf,
    conns: BTreeMap<u32, Conn>,
    by_ports: HashMap<(u32, u32), u32>,
    pending: VecDeque<Ctl>,
    next_token: u32,
    next_port: u32,
    counters: Arc<Counters>,
}

impl Muxer {
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
        guest_cid: u64,
        listener: Arc<UnixListener>,
        path: PathBuf,
        counters: Arc<Counters>,
    ) -> Muxer {
        Muxer {
            mem,
            queues,
            interrupt,
            guest_cid,
            listener,
            path,
            conns: BTreeMap::new(),
            by_ports: HashMap::new(),
            pending: VecDeque::new(),
            next_token: LISTENER + 1,
            next_port: 1 << 30,
            counters,
        }
    }

    fn add_conn(&mut self, c: Conn, fds: &mut dyn Watch) -> u32 {
        let token = self.next_token;
        self.next_token = self.next_token.checked_add(1).unwrap_or(LISTENER + 1);
        fds.watch(c.stream.as_raw_fd(), token, EventSet::IN);
        if c.state != State::AwaitingConnect {
            self.by_ports.insert((c.local_port, c.peer_port), token);
        }
        self.conns.insert(token, c);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        token
    }

    fn remove(&mut self, token: u32, fds: &mut dyn Watch) {
        if let Some(c) = self.conns.remove(&token) {
            fds.forget(c.stream.as_raw_fd());
            self.by_ports.remove(&(c.local_port, c.peer_port));
        }
    }

    /// Ends a connection: the guest is told (`RST`), the host socket closed.
    fn reset(&mut self, token: u32, fds: &mut dyn Watch) {
        if let Some(c) = self.conns.get(&token) {
            if c.state != State::AwaitingConnect {
                self.pending.push_back(Ctl {
                    op: OP_RST,
                    local_port: c.local_port,
                    peer_port: c.peer_port,
                    flags: 0,
                    fwd_cnt: c.fwd_cnt,
                });
            }
            self.counters.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.remove(token, fds);
    }

    fn free_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u32::MAX { 1 << 30 } else { p + 1 };
            if !self.by_ports.keys().any(|&(l, _)| l == p) {
                return p;
            }
        }
    }

    /// What the watch on a connection's socket should be now.
    fn rewatch(&self, token: u32, fds: &mut dyn Watch) {
        let Some(c) = self.conns.get(&token) else { return };
        let mut ev = EventSet::empty();
        let wants_data = c.state == State::Established && c.from_host.is_empty() && !c.host_eof && c.credit() > 0;
        if c.state == State::AwaitingConnect || wants_data {
            ev |= EventSet::IN;
        }
        if !c.to_host.is_empty() || !c.preamble.is_empty() {
            ev |= EventSet::OUT;
        }
        if ev.is_empty() {
            fds.forget(c.stream.as_raw_fd());
        } else {
            fds.watch(c.stream.as_raw_fd(), token, ev);
        }
    }

    fn on_listener(&mut self, fds: &mut dyn Watch) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let c = Conn::new(stream, State::AwaitingConnect, 0, 0);
                    self.add_conn(c, fds);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock: accepting on {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }

    /// A host process's `CONNECT <port>\n`, a byte at a time (nothing past
    /// the line may be consumed: it is the connection's first data).
    fn read_connect(&mut self, token: u32, fds: &mut dyn Watch) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        let mut byte = [0u8];
        loop {
            match c.stream.read(&mut byte) {
                Ok(0) => return self.remove(token, fds),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if c.line.len() < 32 => c.line.push(byte[0]),
                Ok(_) => return self.remove(token, fds),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.remove(token, fds),
            }
        }
        let line = String::from_utf8_lossy(&c.line).into_owned();
        let port = line.strip_prefix("CONNECT ").and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else {
            log::warn!("vsock: a host client sent {line:?}, not CONNECT <port>; closed");
            return self.remove(token, fds);
        };
        let local = self.free_port();
        let c = self.conns.get_mut(&token).expect("still there");
        c.state = State::Requesting;
        c.local_port = local;
        c.peer_port = port;
        self.by_ports.insert((local, port), token);
        self.pending.push_back(Ctl { op: OP_REQUEST, local_port: local, peer_port: port, flags: 0, fwd_cnt: 0 });
        self.rewatch(token, fds);
    }

    /// Writes what the guest sent to the host socket, as far as it takes it.
    fn flush_to_host(&mut self, token: u32, fds: &mut dyn Watch) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        // lithe's own line first; only the guest's bytes count towards the
        // credit the guest is given back (fwd_cnt).
        while !c.preamble.is_empty() {
            match c.stream.write(&c.preamble) {
                Ok(0) => return self.reset(token, fds),
                Ok(n) => drop(c.preamble.drain(..n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return self.rewatch(token, fds),
                Err(_) => return self.reset(token, fds),
            }
        }
        while !c.to_host.is_empty() {
            match c.stream.write(&c.to_host) {
                Ok(0) => return self.reset(token, fds),
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.reset(token, fds),
            }
        }
        // Tell the guest it may send more once a good share was taken.
        if c.fwd_cnt.wrapping_sub(c.announced_fwd) >= BUF_ALLOC / 4 {
            c.announced_fwd = c.fwd_cnt;
            let ctl = Ctl {
                op: OP_CREDIT_UPDATE,
                local_port: c.local_port,
                peer_port: c.peer_port,
                flags: 0,
                fwd_cnt: c.fwd_cnt,
            };
            self.pending.push_back(ctl);
        }
        self.rewatch(token, fds);
    }

    /// Reads what the host sent, up to what the guest can take.
    fn fill_from_host(&mut self, token: u32, fds: &mut dyn Watch) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        if c.state != State::Established || !c.from_host.is_empty() || c.host_eof {
            return self.rewatch(token, fds);
        }
        let want = c.credit().min(MAX_PKT) as usize;
        if want > 0 {
            c.from_host.resize(want, 0);
            match c.stream.read(&mut c.from_host) {
                Ok(0) => {
                    c.from_host.clear();
                    c.host_eof = true;
                    let ctl = Ctl {
                        op: OP_SHUTDOWN,
                        local_port: c.local_port,
                        peer_port: c.peer_port,
                        flags: SHUTDOWN_BOTH,
                        fwd_cnt: c.fwd_cnt,
                    };
                    self.pending.push_back(ctl);
                }
                Ok(n) => c.from_host.truncate(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.from_host.clear(),
                Err(_) => {
                    c.from_host.clear();
                    return self.reset(token, fds);
                }
            }
        }
        self.rewatch(token, fds);
    }

    /// Fills the guest's RX buffers: control packets first, then data.
    fn deliver(&mut self, fds: &mut dyn Watch) {
        let mem = self.mem.memory();
        let mut used = false;
        loop {
            let ctl = self.pending.front().copied();
            let data_token = if ctl.is_none() {
                self.conns
                    .iter()
                    .find(|(_, c)| c.state == State::Established && !c.from_host.is_empty() && c.credit() > 0)
                    .map(|(&t, _)| t)
            } else {
                None
            };
            if ctl.is_none() && data_token.is_none() {
                break;
            }
            let Some(mut chain) = self.queues[RX].pop_descriptor_chain(&*mem) else { break };
            let head = chain.head_index();
            let mut pkt = match VsockPacket::from_rx_virtq_chain(&*mem, &mut chain, MAX_PKT) {
                Ok(p) => p,
                Err(e) => {
                    guest_warn!("vsock: an RX buffer the guest offered is unusable: {e}");
                    let _ = self.queues[RX].add_used(&*mem, head, 0);
                    used = true;
                    continue;
                }
            };
            pkt.set_src_cid(HOST_CID).set_dst_cid(self.guest_cid).set_type(TYPE_STREAM).set_buf_alloc(BUF_ALLOC);
            let mut len = 0u32;
            if let Some(ctl) = ctl {
                self.pending.pop_front();
                pkt.set_op(ctl.op)
                    .set_src_port(ctl.local_port)
                    .set_dst_port(ctl.peer_port)
                    .set_flags(ctl.flags)
                    .set_fwd_cnt(ctl.fwd_cnt)
                    .set_len(0);
            } else if let Some(token) = data_token {
                let c = self.conns.get_mut(&token).expect("found above");
                let room = pkt.data_slice().map_or(0, |d| d.len()) as u32;
                let n = (c.from_host.len() as u32).min(c.credit()).min(room) as usize;
                if let Some(d) = pkt.data_slice() {
                    let _ = d.write_slice(&c.from_host[..n], 0);
                }
                c.from_host.drain(..n);
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                c.announced_fwd = c.fwd_cnt;
                pkt.set_op(OP_RW)
                    .set_src_port(c.local_port)
                    .set_dst_port(c.peer_port)
                    .set_flags(0)
                    .set_fwd_cnt(c.fwd_cnt)
                    .set_len(n as u32);
                len = n as u32;
                self.counters.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                if c.from_host.is_empty() {
                    self.fill_from_host(token, fds);
                }
            }
            log::trace!("vsock: to the guest: op {} ({len} bytes)", pkt.op());
            let _ = self.queues[RX].add_used(&*mem, head, PKT_HEADER_SIZE as u32 + len);
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
    }

    /// One packet from the guest.
    fn on_tx(&mut self, pkt: &VsockPacket<'_, ()>, fds: &mut dyn Watch) {
        let (local, peer) = (pkt.dst_port(), pkt.src_port());
        log::trace!("vsock: from the guest: op {} {peer} -> {local}, {} bytes", pkt.op(), pkt.len());
        let reply = |op| Ctl { op, local_port: local, peer_port: peer, flags: 0, fwd_cnt: 0 };
        if pkt.dst_cid() != HOST_CID || pkt.src_cid() != self.guest_cid || pkt.type_() != TYPE_STREAM {
            guest_warn!(
                "vsock: a packet from cid {} to cid {} of type {}: only streams to the host (cid 2); reset",
                pkt.src_cid(),
                pkt.dst_cid(),
                pkt.type_()
            );
            if pkt.op() != OP_RST {
                self.pending.push_back(reply(OP_RST));
            }
            return;
        }
        let token = self.by_ports.get(&(local, peer)).copied();
        if let Some(c) = token.and_then(|t| self.conns.get_mut(&t)) {
            c.peer_buf_alloc = pkt.buf_alloc();
            c.peer_fwd_cnt = pkt.fwd_cnt();
        }
        match (pkt.op(), token) {
            (OP_REQUEST, None) => {
                let path = PathBuf::from(format!("{}_{local}", self.path.display()));
                match connect_nonblocking(&path) {
                    Ok(stream) => {
                        let mut c = Conn::new(stream, State::Established, local, peer);
                        c.peer_buf_alloc = pkt.buf_alloc();
                        c.peer_fwd_cnt = pkt.fwd_cnt();
                        let t = self.add_conn(c, fds);
                        self.pending.push_back(reply(OP_RESPONSE));
                        self.rewatch(t, fds);
                    }
                    Err(e) => {
                        log::info!("vsock: the guest's connect to port {local}: {}: {e}; reset", path.display());
                        self.pending.push_back(reply(OP_RST));
                    }
                }
            }
            (OP_RESPONSE, Some(t)) if self.conns[&t].state == State::Requesting => {
                let c = self.conns.get_mut(&t).expect("by_ports names it");
                c.state = State::Established;
                c.preamble.extend_from_slice(format!("OK {}\n", c.local_port).as_bytes());
                self.flush_to_host(t, fds);
            }
            (OP_RW, Some(t)) if self.conns[&t].state == State::Established => {
                let c = self.conns.get_mut(&t).expect("by_ports names it");
                let n = pkt.len() as usize;
                if c.to_host.len() + n > BUF_ALLOC as usize {
                    guest_warn!("vsock: the guest sent past the credit it was given on port {local}; reset");
                    return self.reset(t, fds);
                }
                if let Some(d) = pkt.data_slice() {
                    let start = c.to_host.len();
                    c.to_host.resize(start + n.min(d.len()), 0);
                    let _ = d.read_slice(&mut c.to_host[start..], 0);
                }
                self.counters.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                self.flush_to_host(t, fds);
            }
            (OP_CREDIT_REQUEST, Some(t)) => {
                let c = &self.conns[&t];
                self.pending.push_back(Ctl { fwd_cnt: c.fwd_cnt, ..reply(OP_CREDIT_UPDATE) });
            }
            (OP_CREDIT_UPDATE, Some(t)) => self.fill_from_host(t, fds),
            (OP_SHUTDOWN, Some(t)) => {
                let _ = self.conns[&t].stream.shutdown(std::net::Shutdown::Both);
                self.reset(t, fds);
            }
            (OP_RST, Some(t)) => self.remove(t, fds),
            (OP_RST, None) => {}
            (op, _) => {
                guest_warn!("vsock: op {op} for port {local} from {peer} fits no connection; reset");
                self.pending.push_back(reply(OP_RST));
            }
        }
    }

    fn on_tx_queue(&mut self, fds: &mut dyn Watch) {
        let mem = self.mem.memory();
        let mut used = false;
        while let Some(mut chain) = self.queues[TX].pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            match VsockPacket::from_tx_virtq_chain(&*mem, &mut chain, MAX_PKT) {
                Ok(pkt) => self.on_tx(&pkt, fds),
                Err(e) => guest_warn!("vsock: a TX packet the guest built is unusable: {e}"),
            }
            let _ = self.queues[TX].add_used(&*mem, head, 0);
            used = true;
        }
        if used {
            self.interrupt.signal_used();
        }
    }
}

/// Connects to a Unix socket without ever blocking the worker: a service
/// whose backlog is full refuses at once (`EAGAIN`) instead of stalling
/// every other connection. std's `UnixStream::connect` blocks there; the
/// `socket2` crate would do this too, but not for one call.
fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with constant arguments; the fd is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes for the call's duration.
    let r = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

impl QueueHandler for Muxer {
    fn started(&mut self, fds: &mut dyn Watch) {
        fds.watch(self.listener.as_raw_fd(), LISTENER, EventSet::IN);
    }

    fn process_queue(&mut self, index: usize, fds: &mut dyn Watch) {
        if index == TX {
            self.on_tx_queue(fds);
        }
        // New RX buffers, or packets to answer: deliver what waits.
        let tokens: Vec<u32> = self.conns.keys().copied().collect();
        for t in tokens {
            self.rewatch(t, fds);
        }
        self.deliver(fds);
    }

    fn process_fd(&mut self, token: u32, events: EventSet, fds: &mut dyn Watch) {
        if token == LISTENER {
            return self.on_listener(fds);
        }
        let Some(state) = self.conns.get(&token).map(|c| c.state) else { return };
        if events.contains(EventSet::OUT) {
            self.flush_to_host(token, fds);
        }
        if events.contains(EventSet::IN) {
            match state {
                State::AwaitingConnect => self.read_connect(token, fds),
                _ => self.fill_from_host(token, fds),
            }
        } else if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.reset(token, fds);
        }
        self.deliver(fds);
    }
}
