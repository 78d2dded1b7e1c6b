//! What a vhost-user backend answers, as lithe's virtio-fs frontend parses
//! it: the input is every byte the backend sends, in order (then it stops
//! sending). lithe negotiates, starts two rings on a shared guest memory
//! and stops them. Any reply (wrong request code, short bodies, stray fds
//! absent, bogus features or queue counts, acks that say no) must end in a
//! negotiated session or a named error, never a panic or a hang.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use devices::virtio::fs::backend::{Backend, Ring};
use devices::virtio::fs::watchdog::Watchdog;
use libfuzzer_sys::fuzz_target;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 0x10000;

fn memory() -> GuestMemoryMmap {
    // SAFETY: a NUL-terminated name; memfd_create returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.set_len(MEM as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), MEM, Some(FileOffset::new(file, 0)))]).unwrap()
}

fn watchdog() -> Arc<Watchdog> {
    static DOG: OnceLock<Arc<Watchdog>> = OnceLock::new();
    DOG.get_or_init(|| Arc::new(Watchdog::spawn("fuzz-dog", Duration::from_secs(2), None).unwrap())).clone()
}

fuzz_target!(|data: &[u8]| {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let replies = data.to_vec();
    // The backend: sends its bytes, stops sending, reads whatever lithe
    // sends until lithe hangs up.
    let backend = std::thread::spawn(move || {
        let _ = theirs.write_all(&replies);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        while theirs.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    if let Ok(b) = Backend::negotiate(ours, 2, watchdog()) {
        let mem = memory();
        let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        let ring = |i: u64| Ring {
            size: 16,
            max_size: 256,
            desc: 0x1000 * (1 + 3 * i),
            avail: 0x1000 * (2 + 3 * i),
            used: 0x1000 * (3 + 3 * i),
            base: 0,
            call: &call,
            kick: &kick,
        };
        if b.start(&mem, 1 << 32, &[ring(0), ring(1)]).is_ok() {
            let _ = b.stop();
        }
    }
    backend.join().unwrap();
});
