//! The vsock muxer fed from guest memory: the input is the guest's memory
//! (the TX ring at 0, its avail ring at 0x1000; the RX ring at 0x3000,
//! buffers anywhere), so packets of every op, port and length, in chains
//! that loop or point outside memory, go through real `virtio-queue`
//! queues into lithe's connection table. Guest connects reach a host
//! listener that exists for port 5000 only. Nothing may panic or hang.
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::{Arc, OnceLock};

use devices::virtio::vsock::muxer::{Counters, Muxer};
use devices::virtio::worker::{QueueHandler, Watch};
use devices::virtio::VirtioInterrupt;
use devices::InterruptTrigger;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

const MEM: usize = 0x10000;

struct NoIrq;
impl InterruptTrigger for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

struct NoLoop;
impl Watch for NoLoop {
    fn watch(&mut self, _fd: i32, _token: u32, _events: EventSet) -> bool {
        true
    }
    fn forget(&mut self, _fd: i32) {}
}

/// A socket directory for the whole run, with a listener on port 5000.
fn sockets() -> &'static (std::path::PathBuf, UnixListener, UnixListener) {
    static S: OnceLock<(std::path::PathBuf, UnixListener, UnixListener)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lithe-fuzz-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        l.set_nonblocking(true).unwrap();
        let svc = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
        (path, l, svc)
    })
}

fn queue(base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let (path, listener, svc) = sockets();
    // The host service takes what the last run connected, so connects keep
    // succeeding; were it slow, a full backlog is refused, never waited on.
    svc.set_nonblocking(true).unwrap();
    while svc.accept().is_ok() {}
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&data[..data.len().min(MEM)], GuestAddress(0)).unwrap();
    let queues = vec![queue(0x3000), queue(0), queue(0x6000)];
    let listener = Arc::new(listener.try_clone().unwrap());
    let mut m = Muxer::new(
        GuestMemoryAtomic::new(mem),
        queues,
        Arc::new(VirtioInterrupt::new(Box::new(NoIrq))),
        3,
        listener,
        path.clone(),
        Arc::new(Counters::default()),
    );
    let mut w = NoLoop;
    m.started(&mut w);
    m.process_queue(1, &mut w);
    m.process_queue(0, &mut w);
    m.process_queue(1, &mut w);
});
