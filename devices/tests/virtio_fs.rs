//! virtio-fs without a guest: negotiation with backends that are absent,
//! silent, closing or lying (each fails in bounded time, with the step
//! named), and the answers lithe gives in a dead backend's place.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::virtio::fs::backend::{Backend, BackendError, REPLY_LIMIT};
use devices::virtio::fs::fail::{answer_eio, InHeader, OutHeader};
use devices::virtio::fs::watchdog::Watchdog;
use devices::virtio::fs::{Fs, FsConfig, FsError};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn config(socket: &std::path::Path) -> FsConfig {
    FsConfig { tag: "share".into(), socket: socket.to_path_buf(), request_queues: 1, queue_size: 256 }
}

#[test]
fn no_backend_listening_fails_at_connect_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let err = Fs::new("virtio-fs0", &config(&sock), None).err().expect("nothing listens there");
    assert!(matches!(err, FsError::Backend { source: BackendError::Connect(_), .. }), "{err}");
    assert!(err.to_string().contains("none.sock"), "{err}");
}

fn watchdog(limit: Duration) -> Arc<Watchdog> {
    Arc::new(Watchdog::spawn("test-dog", limit, None).unwrap())
}

#[test]
fn a_silent_backend_fails_within_the_watchdogs_limit() {
    let (a, mut b) = UnixStream::pair().unwrap();
    // Reads everything, never answers.
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while b.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let dog = watchdog(Duration::from_millis(300));
    let t0 = Instant::now();
    let err = Backend::negotiate(a, 2, dog.clone()).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(err.to_string().contains("GET_FEATURES"), "the step is named: {err}");
    assert!(dog.fired());
    t.join().unwrap();
}

#[test]
fn a_device_on_a_silent_backend_is_refused_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let t0 = Instant::now();
    let err = Fs::new("virtio-fs0", &config(&sock), None).err().expect("no answer");
    assert!(t0.elapsed() < REPLY_LIMIT + Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(err.to_string().contains("silent.sock") && err.to_string().contains("GET_FEATURES"), "{err}");
    t.join().unwrap();
}

#[test]
fn a_backend_that_hangs_up_or_lies_is_refused_by_step() {
    // Closes at once.
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let err = Backend::negotiate(a, 2, watchdog(REPLY_LIMIT)).unwrap_err();
    assert!(matches!(err, BackendError::Protocol { .. }), "{err}");
    // Answers GET_FEATURES without VERSION_1.
    let (a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut hdr = [0u8; 12];
        b.read_exact(&mut hdr).unwrap(); // SET_OWNER, no body
        b.read_exact(&mut hdr).unwrap(); // GET_FEATURES
                                         // Reply: request 1, flags VERSION|REPLY (0x5), 8 bytes: features 0.
        let mut reply = vec![1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0];
        reply.extend(0u64.to_le_bytes());
        b.write_all(&reply).unwrap();
        b
    });
    let err = Backend::negotiate(a, 2, watchdog(REPLY_LIMIT)).unwrap_err();
    assert!(matches!(err, BackendError::NoVersion1(0)), "{err}");
    drop(t.join().unwrap());
}

const BUF: u64 = 0x10_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

/// A request chain: `readable` bytes at BUF, then `writable` bytes after it.
fn request(m: &GuestMemoryMmap, readable: u32, writable: u32) -> Queue {
    let mq = MockSplitQueue::create(m, GuestAddress(0x1000), 16);
    let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(BUF, readable, VRING_DESC_F_NEXT as u16, 1))];
    descs.push(RawDescriptor::from(SplitDescriptor::new(BUF + 0x1000, writable, VRING_DESC_F_WRITE as u16, 0)));
    mq.add_desc_chains(&descs, 0).unwrap();
    mq.create_queue().unwrap()
}

fn header(opcode: u32, unique: u64) -> InHeader {
    InHeader { len: 40, opcode, unique, ..InHeader::default() }
}

#[test]
fn a_request_on_a_dead_backend_gets_eio_with_its_unique_id() {
    let m = mem();
    let mut q = request(&m, 40, 4096);
    m.write_obj(header(1 /* LOOKUP */, 0xfeed), GuestAddress(BUF)).unwrap();
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(answer_eio(&m, chain), Ok(16));
    let out: OutHeader = m.read_obj(GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EIO, 0xfeed));
}

/// The device offers indirect descriptors when the backend does, so the
/// fallback gets chains in an indirect table (Linux puts a whole FUSE
/// request in one) and must answer them alike.
#[test]
fn a_request_in_an_indirect_table_gets_eio_too() {
    let m = mem();
    let table = GuestAddress(0x8000);
    let entries = [
        SplitDescriptor::new(BUF, 40, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(BUF + 0x1000, 4096, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        m.write_obj(RawDescriptor::from(*d), GuestAddress(table.0 + 16 * i as u64)).unwrap();
    }
    let mq = MockSplitQueue::create(&m, GuestAddress(0x1000), 16);
    mq.add_desc_chains(&[RawDescriptor::from(SplitDescriptor::new(table.0, 32, VRING_DESC_F_INDIRECT as u16, 0))], 0)
        .unwrap();
    let mut q: Queue = mq.create_queue().unwrap();
    m.write_obj(header(1 /* LOOKUP */, 0xbeef), GuestAddress(BUF)).unwrap();
    let chain = q.pop_descriptor_chain(&m).unwrap();
    assert_eq!(answer_eio(&m, chain), Ok(16));
    let out: OutHeader = m.read_obj(GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!((out.len, out.error, out.unique), (16, -libc::EIO, 0xbeef));
}

#[test]
fn forgets_get_no_reply_and_short_chains_are_refused() {
    let m = mem();
    for opcode in [2, 42] {
        let mut q = request(&m, 48, 16);
        m.write_obj(header(opcode, 7), GuestAddress(BUF)).unwrap();
        m.write_obj(0xaaaa_aaaa_u32, GuestAddress(BUF + 0x1000)).unwrap();
        assert_eq!(answer_eio(&m, q.pop_descriptor_chain(&m).unwrap()), Ok(0), "opcode {opcode}");
        assert_eq!(m.read_obj::<u32>(GuestAddress(BUF + 0x1000)).unwrap(), 0xaaaa_aaaa, "nothing written");
    }
    let mut q = request(&m, 20, 16);
    assert!(answer_eio(&m, q.pop_descriptor_chain(&m).unwrap()).is_err(), "a header cut short");
    let mut q = request(&m, 40, 8);
    m.write_obj(header(1, 7), GuestAddress(BUF)).unwrap();
    assert!(answer_eio(&m, q.pop_descriptor_chain(&m).unwrap()).is_err(), "no room for the reply");
}

#[test]
fn a_sticky_used_bit_survives_acks_until_a_reset() {
    use devices::virtio::interrupt::{INT_CONFIG, INT_VRING};
    use devices::virtio::VirtioInterrupt;
    let irq = devices::EventFdTrigger::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let i = VirtioInterrupt::new(Box::new(irq));
    assert!(i.irqfd().is_some(), "an irqfd trigger hands out its eventfd");
    i.set_sticky(INT_VRING);
    i.signal(INT_CONFIG);
    assert_eq!(i.status(), INT_VRING | INT_CONFIG);
    i.ack(INT_VRING | INT_CONFIG);
    assert_eq!(i.status(), INT_VRING, "the config bit is exact, the used bit stays");
    i.clear();
    assert_eq!(i.status(), 0, "a reset clears it");
}
