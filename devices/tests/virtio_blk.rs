//! A virtio-blk device behind the MMIO transport, driven the way Linux's
//! driver drives it: status handshake, feature negotiation, one queue set up
//! in guest memory, `DRIVER_OK`, requests, notifications; the device serves
//! them on its own worker thread and the test waits for its interrupt.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use devices::virtio::block::request::{S_IOERR, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use devices::virtio::block::{Block, DiskConfig};
use devices::virtio::mmio::{MmioTransport, NOTIFY_OFFSET, STATUS_NEEDS_RESET};
use devices::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use devices::{BusDevice, EventFdTrigger};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Driver {
    mem: GuestMemoryMmap,
    t: MmioTransport,
    irq: EventFd,
}

fn w(t: &MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

impl Driver {
    fn new(disk: std::fs::File, read_only: bool) -> Driver {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(Box::new(EventFdTrigger::new(irq.try_clone().unwrap()))));
        let config = DiskConfig { read_only, direct: false, serial: "lithe-disk-0".into() };
        let dev = Block::new("virtio-blk0", disk, config, None).unwrap();
        let t = MmioTransport::new(Box::new(dev), GuestMemoryAtomic::new(mem.clone()), interrupt).unwrap();
        Driver { mem, t, irq }
    }

    /// The handshake up to DRIVER_OK, with `queue` as queue 0.
    fn setup(&self, queue: &MockSplitQueue<GuestMemoryMmap>, features: u64) {
        let t = &self.t;
        assert_eq!(r(t, 0), 0x7472_6976, "magic");
        assert_eq!(r(t, 4), 2, "version 2");
        assert_eq!(r(t, 8), 2, "block device");
        w(t, 0x70, 1);
        w(t, 0x70, 1 | 2);
        w(t, 0x14, 1);
        assert_ne!(r(t, 0x10) & 1, 0, "VERSION_1 offered");
        w(t, 0x24, 0);
        w(t, 0x20, features as u32);
        w(t, 0x24, 1);
        w(t, 0x20, (features >> 32) as u32);
        w(t, 0x70, 1 | 2 | 8);
        assert_ne!(r(t, 0x70) & 8, 0, "FEATURES_OK kept");
        w(t, 0x30, 0);
        assert_eq!(r(t, 0x34), 1024);
        w(t, 0x38, 16);
        let a = |g: GuestAddress| (g.0 as u32, (g.0 >> 32) as u32);
        let (lo, hi) = a(queue.desc_table_addr());
        w(t, 0x80, lo);
        w(t, 0x84, hi);
        let (lo, hi) = a(queue.avail_addr());
        w(t, 0x90, lo);
        w(t, 0x94, hi);
        let (lo, hi) = a(queue.used_addr());
        w(t, 0xa0, lo);
        w(t, 0xa4, hi);
        w(t, 0x44, 1);
        w(t, 0x70, 1 | 2 | 8 | 4);
    }

    /// Queues one request chain, notifies, waits for the interrupt; the status byte.
    fn request(
        &mut self,
        queue: &MockSplitQueue<GuestMemoryMmap>,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> u8 {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(HDR, 16, 0, 0))];
        for &(addr, len, write) in data {
            let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            descs.push(RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0)));
        }
        descs.push(RawDescriptor::from(SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0)));
        // Chain the descriptors from the table's start (the previous chain
        // is used by now) and publish the head in the avail ring.
        let n = descs.len();
        for (i, d) in descs.iter_mut().enumerate() {
            let sd = SplitDescriptor::from(*d);
            let flags = if i + 1 == n { sd.flags() } else { sd.flags() | 1 };
            *d = RawDescriptor::from(SplitDescriptor::new(sd.addr().0, sd.len(), flags, i as u16 + 1));
        }
        queue.add_desc_chains(&descs, 0).unwrap();
        w(&self.t, NOTIFY_OFFSET, 0);
        // The device's interrupt: a blocking read of the irqfd.
        let mut b = [0u8; 8];
        let mut irq = &self.irq;
        irq.read_exact(&mut b).unwrap();
        assert_ne!(r(&self.t, 0x60) & 1, 0, "used-ring interrupt status");
        w(&self.t, 0x64, 1);
        self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
    }
}

// `EventFd` reads through `Read` on a reference.
trait ReadExact {
    fn read_exact(&mut self, b: &mut [u8]) -> std::io::Result<()>;
}
impl ReadExact for &EventFd {
    fn read_exact(&mut self, _b: &mut [u8]) -> std::io::Result<()> {
        self.read().map(|_| ())
    }
}

fn disk(bytes: usize) -> (tempfile::NamedTempFile, std::fs::File) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let pattern: Vec<u8> = (0..bytes).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
    f.write_all(&pattern).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(f.path()).unwrap();
    (f, file)
}

#[test]
fn reads_writes_flushes_and_identifies_through_the_transport() {
    let (tmp, file) = disk(64 * 1024);
    let mut d = Driver::new(file, false);
    let mem = d.mem.clone();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    d.setup(&q, VIRTIO_F_VERSION_1 | (1 << 9));
    // Capacity in sectors, in the config space.
    let mut cap = [0u8; 8];
    d.t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);

    assert_eq!(d.request(&q, T_IN, 2, &[(DATA, 1024, true)]), S_OK);
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    let mut want = vec![0u8; 1024];
    let mut f = std::fs::File::open(tmp.path()).unwrap();
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.read_exact(&mut want).unwrap();
    assert_eq!(got, want, "sectors 2-3, as on disk");

    mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(d.request(&q, T_OUT, 5, &[(DATA, 512, false)]), S_OK);
    assert_eq!(d.request(&q, T_FLUSH, 0, &[]), S_OK);
    let mut on_disk = vec![0u8; 512];
    f.seek(SeekFrom::Start(5 * 512)).unwrap();
    f.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, vec![0xab; 512], "written and flushed");

    assert_eq!(d.request(&q, T_GET_ID, 0, &[(DATA, 20, true)]), S_OK);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..12], b"lithe-disk-0");

    // Past the end: the request fails, the device goes on.
    assert_eq!(d.request(&q, T_IN, 128, &[(DATA, 512, true)]), S_IOERR);
    assert_eq!(d.request(&q, T_IN, 0, &[(DATA, 512, true)]), S_OK);
    let counters: std::collections::BTreeMap<_, _> = d.t.counters().into_iter().collect();
    assert_eq!((counters["read_ops"], counters["write_ops"], counters["flush_ops"]), (2, 1, 1), "{counters:?}");
    assert_eq!(counters["errors"], 1);
}

#[test]
fn a_read_only_disk_refuses_writes_and_the_file_is_untouched() {
    let (tmp, file) = disk(4096);
    let before = std::fs::read(tmp.path()).unwrap();
    let mut d = Driver::new(file, true);
    let mem = d.mem.clone();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    d.setup(&q, VIRTIO_F_VERSION_1 | (1 << 5));
    mem.write_slice(&[0x55u8; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(d.request(&q, T_OUT, 0, &[(DATA, 512, false)]), S_IOERR);
    assert_eq!(std::fs::read(tmp.path()).unwrap(), before);
}

#[test]
fn a_queue_outside_guest_memory_needs_a_reset_and_a_reset_recovers() {
    let (_tmp, file) = disk(4096);
    let d = Driver::new(file, false);
    let t = &d.t;
    w(t, 0x70, 1 | 2);
    w(t, 0x24, 1);
    w(t, 0x20, 1);
    w(t, 0x70, 1 | 2 | 8);
    w(t, 0x30, 0);
    w(t, 0x38, 16);
    w(t, 0x80, 0xffff_0000); // far outside the 4 MiB of guest memory
    w(t, 0x44, 1);
    w(t, 0x70, 1 | 2 | 8 | 4);
    assert_ne!(r(t, 0x70) & STATUS_NEEDS_RESET, 0);
    assert_ne!(r(t, 0x60) & 2, 0, "a configuration interrupt says so");
    w(t, 0x70, 0);
    assert_eq!(r(t, 0x70), 0, "reset");
    assert_eq!(r(t, 0x44), 0, "queues forgotten");
    // Garbage: wrong sizes, unknown registers, features outside the offer.
    t.write(0x70, &[1]);
    w(t, 0xdead0, 7);
    w(t, 0x70, 1 | 2);
    w(t, 0x24, 0);
    w(t, 0x20, 1 << 31);
    w(t, 0x70, 1 | 2 | 8);
    assert_eq!(r(t, 0x70) & 8, 0, "FEATURES_OK refused without VERSION_1, with an unknown bit");
}

/// The backing file fails a write (here: opened read-only behind the
/// device's back; a full filesystem takes the same path): that request
/// fails with IOERR, the next ones are served.
#[test]
fn an_io_error_on_the_backing_file_fails_that_request_and_the_device_goes_on() {
    let (tmp, _) = disk(8192);
    let file = std::fs::File::open(tmp.path()).unwrap();
    let mut d = Driver::new(file, false);
    let mem = d.mem.clone();
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    d.setup(&q, VIRTIO_F_VERSION_1);
    assert_eq!(d.request(&q, T_OUT, 0, &[(DATA, 512, false)]), S_IOERR);
    assert_eq!(d.request(&q, T_IN, 1, &[(DATA, 512, true)]), S_OK);
    assert_eq!(d.request(&q, T_OUT, 2, &[(DATA, 512, false)]), S_IOERR);
    let counters: std::collections::BTreeMap<_, _> = d.t.counters().into_iter().collect();
    assert_eq!((counters["errors"], counters["read_ops"], counters["write_ops"]), (2, 1, 0), "{counters:?}");
}
