//! Hybrid vsock behind the MMIO transport: the test plays the guest's
//! driver on three rings in guest memory and a host process on the Unix
//! socket. Both directions: a host `CONNECT` answered by the guest, and a
//! guest connect to the host's `<socket>_<port>`; data, credit, close.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::muxer::{BUF_ALLOC, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN};
use devices::virtio::vsock::Vsock;
use devices::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use devices::{BusDevice, EventFdTrigger};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 16;
/// Each queue's rings: descriptors, avail at +0x100, used at +0x200.
const RINGS: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const HDR: usize = 44;

fn w(t: &MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

struct Ring {
    base: u64,
    avail_idx: u16,
    used_seen: u16,
}

struct Guest {
    mem: GuestMemoryMmap,
    t: MmioTransport,
    irq: EventFd,
    rings: Vec<Ring>,
    tx_next: u64,
}

#[derive(Debug, Default, Clone)]
struct Pkt {
    src_port: u32,
    dst_port: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

fn header(p: &Pkt, src_cid: u64, dst_cid: u64) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..8].copy_from_slice(&src_cid.to_le_bytes());
    h[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    h[16..20].copy_from_slice(&p.src_port.to_le_bytes());
    h[20..24].copy_from_slice(&p.dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&(p.data.len() as u32).to_le_bytes());
    h[28..30].copy_from_slice(&1u16.to_le_bytes());
    h[30..32].copy_from_slice(&p.op.to_le_bytes());
    h[32..36].copy_from_slice(&p.flags.to_le_bytes());
    h[36..40].copy_from_slice(&p.buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&p.fwd_cnt.to_le_bytes());
    h
}

impl Guest {
    fn new(path: &std::path::Path) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(Box::new(EventFdTrigger::new(irq.try_clone().unwrap()))));
        let dev = Vsock::new(GUEST_CID, path, None).unwrap();
        let t = MmioTransport::new(Box::new(dev), GuestMemoryAtomic::new(mem.clone()), interrupt).unwrap();
        let rings = RINGS.iter().map(|&base| Ring { base, avail_idx: 0, used_seen: 0 }).collect();
        let g = Guest { mem, t, irq, rings, tx_next: 0 };
        let t = &g.t;
        let mut cid = [0u8; 8];
        t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID, "the guest's CID in the config space");
        w(t, 0x70, 1);
        w(t, 0x70, 3);
        w(t, 0x24, 1);
        w(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
        w(t, 0x70, 11);
        for (i, &base) in RINGS.iter().enumerate() {
            w(t, 0x30, i as u32);
            w(t, 0x38, u32::from(QSIZE));
            w(t, 0x80, base as u32);
            w(t, 0x90, (base + 0x100) as u32);
            w(t, 0xa0, (base + 0x200) as u32);
            w(t, 0x44, 1);
        }
        w(t, 0x70, 15);
        g
    }

    /// Puts a chain of (addr, len, device-writable) descriptors in ring `q`
    /// at descriptor `slot` and makes it available.
    fn offer(&mut self, q: usize, slot: u16, descs: &[(u64, u32, bool)]) {
        let r = &mut self.rings[q];
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = slot + i as u16;
            let next = if i + 1 < descs.len() { 1u16 } else { 0 };
            let flags = next | if write { 2 } else { 0 };
            let d = r.base + u64::from(idx) * 16;
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(idx + 1, GuestAddress(d + 14)).unwrap();
        }
        let ring_slot = r.base + 0x100 + 4 + u64::from(r.avail_idx % QSIZE) * 2;
        self.mem.write_obj(slot, GuestAddress(ring_slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem.write_obj(r.avail_idx, GuestAddress(r.base + 0x100 + 2)).unwrap();
        w(&self.t, 0x50, q as u32);
    }

    /// Eight RX buffers: a header descriptor and a 4 KiB data descriptor each.
    fn offer_rx(&mut self) {
        for i in 0..8u16 {
            let b = RX_BUFS + u64::from(i) * 0x2000;
            self.offer(0, i * 2, &[(b, HDR as u32, true), (b + 0x100, 4096, true)]);
        }
    }

    fn send(&mut self, p: Pkt) {
        let b = TX_BUFS + (self.tx_next % 8) * 0x2000;
        let slot = (self.tx_next % 8) as u16 * 2;
        self.tx_next += 1;
        self.mem.write_slice(&header(&p, GUEST_CID, 2), GuestAddress(b)).unwrap();
        if p.data.is_empty() {
            self.offer(1, slot, &[(b, HDR as u32, false)]);
        } else {
            self.mem.write_slice(&p.data, GuestAddress(b + 0x100)).unwrap();
            self.offer(1, slot, &[(b, HDR as u32, false), (b + 0x100, p.data.len() as u32, false)]);
        }
    }

    /// The next packet the device put in an RX buffer (which is offered again).
    fn recv(&mut self) -> Pkt {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let base = self.rings[0].base;
            let used_idx: u16 = self.mem.read_obj(GuestAddress(base + 0x200 + 2)).unwrap();
            if used_idx != self.rings[0].used_seen {
                let e = base + 0x200 + 4 + u64::from(self.rings[0].used_seen % QSIZE) * 8;
                let head: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
                self.rings[0].used_seen = self.rings[0].used_seen.wrapping_add(1);
                let b = RX_BUFS + u64::from(head / 2) * 0x2000;
                let mut h = [0u8; HDR];
                self.mem.read_slice(&mut h, GuestAddress(b)).unwrap();
                let u32at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
                assert_eq!(u64::from_le_bytes(h[0..8].try_into().unwrap()), 2, "from the host");
                assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), GUEST_CID);
                let n = u32at(24) as usize;
                assert_eq!(len as usize, HDR + n, "used length: header and data");
                let mut data = vec![0u8; n];
                self.mem.read_slice(&mut data, GuestAddress(b + 0x100)).unwrap();
                let p = Pkt {
                    src_port: u32at(16),
                    dst_port: u32at(20),
                    op: u16::from_le_bytes(h[30..32].try_into().unwrap()),
                    flags: u32at(32),
                    buf_alloc: u32at(36),
                    fwd_cnt: u32at(40),
                    data,
                };
                self.offer(0, head as u16, &[(b, HDR as u32, true), (b + 0x100, 4096, true)]);
                return p;
            }
            assert!(std::time::Instant::now() < deadline, "no packet from the device");
            // The device's interrupt, or a short wait for it.
            let mut fds =
                [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&self.irq), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            let _ = self.irq.read();
        }
    }
}

fn read_line(s: &UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_host_connect_and_a_guest_connect_carry_data_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut g = Guest::new(&path);
    g.offer_rx();

    // Host → guest: CONNECT 1024, the guest's RESPONSE, OK <port>.
    let mut host = UnixStream::connect(&path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let req = g.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024), "{req:?}");
    assert_eq!(req.buf_alloc, BUF_ALLOC, "lithe's credit for the guest");
    let port = req.src_port;
    let conn = |op, data: &[u8]| Pkt {
        src_port: 1024,
        dst_port: port,
        op,
        buf_alloc: 65536,
        data: data.to_vec(),
        ..Default::default()
    };
    g.send(conn(OP_RESPONSE, b""));
    assert_eq!(read_line(&host), format!("OK {port}\n"));

    host.write_all(b"hello").unwrap();
    let p = g.recv();
    assert_eq!((p.op, p.data.as_slice()), (OP_RW, &b"hello"[..]), "{p:?}");
    // Only the guest's own bytes count as forwarded, not lithe's OK line:
    // a guest would otherwise see negative credit and never send.
    assert_eq!(p.fwd_cnt, 0, "{p:?}");
    g.send(conn(OP_RW, b"world"));
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");

    // More than the guest's credit: the rest waits until it says it read some.
    let big = vec![7u8; 100_000];
    host.write_all(&big).unwrap();
    let mut delivered = 0;
    while delivered < 65536 - 5 {
        let p = g.recv();
        assert_eq!(p.op, OP_RW);
        delivered += p.data.len();
    }
    assert_eq!(delivered, 65536 - 5, "exactly the guest's buf_alloc, less the 5 bytes before");
    // The guest read all of it: the rest comes.
    g.send(Pkt { fwd_cnt: 65536, ..conn(OP_CREDIT_UPDATE, b"") });
    while delivered < big.len() {
        let p = g.recv();
        assert_eq!(p.op, OP_RW);
        delivered += p.data.len();
    }
    assert_eq!(delivered, big.len());

    // The host goes away: the guest is told.
    drop(host);
    let p = g.recv();
    assert_eq!((p.op, p.flags), (OP_SHUTDOWN, 3), "{p:?}");
    g.send(conn(OP_RST, b""));

    // Guest → host: a connect to CID 2 port 5000 reaches <socket>_5000.
    let listener = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    g.send(Pkt { src_port: 1234, dst_port: 5000, op: OP_REQUEST, buf_alloc: 65536, ..Default::default() });
    let p = g.recv();
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RESPONSE, 5000, 1234), "{p:?}");
    let (mut svc, _) = listener.accept().unwrap();
    svc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.send(Pkt {
        src_port: 1234,
        dst_port: 5000,
        op: OP_RW,
        buf_alloc: 65536,
        data: b"ping".to_vec(),
        ..Default::default()
    });
    let mut got = [0u8; 4];
    svc.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    svc.write_all(b"pong").unwrap();
    let p = g.recv();
    assert_eq!((p.op, p.data.as_slice()), (OP_RW, &b"pong"[..]));

    // A connect to a port nobody listens on is reset.
    g.send(Pkt { src_port: 1235, dst_port: 5001, op: OP_REQUEST, buf_alloc: 65536, ..Default::default() });
    let p = g.recv();
    assert_eq!((p.op, p.dst_port), (OP_RST, 1235));
    let counters: std::collections::BTreeMap<_, _> = g.t.counters().into_iter().collect();
    assert!(counters["rx_bytes"] >= 100_000 && counters["tx_bytes"] >= 9, "{counters:?}");
}
