//! The virtio devices in a real guest: Linux finds them in the DSDT
//! (virtio-mmio, `LNRO0005`), reads and writes the disk, reads the rng; what
//! the guest flushed is in the image file after `kill -9`, and a new VM on
//! the same image, read-only and `O_DIRECT` this time, reads it back and
//! cannot write. vCPUs are added and removed while the disk is busy.

use tests::{disk_pattern, Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// 2 MiB: long enough for a resize to land while it is written.
const SECTORS: usize = 4096;

#[test]
fn a_disk_keeps_what_the_guest_flushed_across_kill_9_and_the_rng_serves() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let disk = format!("path={},serial=lithe-disk0", image.display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=2",
        with_kernel: true,
        args: &["--disk", &disk, "--rng", "src=/dev/urandom"],
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    // Each device serves on a thread of its own, under lithe's device filter.
    let modes = g.thread_seccomp_modes();
    for name in ["virtio-blk0", "virtio-rng"] {
        assert!(modes.iter().any(|(n, m)| n == name && *m == 2), "{name} filtered: {modes:?}");
    }
    g.send("disk-info");
    g.wait_console("LITHE-GUEST disk sectors=8192 serial=lithe-disk0", HOTPLUG_TIMEOUT);
    g.send("rng 128");
    let line = g.wait_console("LITHE-GUEST rng bytes=128 distinct=", HOTPLUG_TIMEOUT);
    let distinct: u32 = line.rsplit('=').next().unwrap().trim().parse().unwrap();
    assert!(distinct > 32, "128 random bytes with {distinct} distinct values: {line}");

    // vCPUs come and go under the I/O: a second vCPU, then a write with a
    // removal issued right behind it, a read-back, and the parked vCPU
    // brought back. The devices' ioeventfds and irqfds belong to the VM,
    // not to any vCPU.
    let (s, r) = g.api("PUT", "vm.resize?wait=true", serde_json::json!({ "desired_vcpus": 2 }));
    assert_eq!((s, r["complete"].as_bool()), (200, Some(true)), "{r}");
    // "complete" is the vCPU running; Linux marks the CPU online a moment
    // later, and only an online CPU takes an interrupt's affinity.
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    // The disk's interrupt (virtio0: the first device in the DSDT) steered
    // to vCPU 1, then proven to reach it: a flushed write (no page cache to
    // answer it) counts there.
    g.send("irq-to virtio0 1");
    g.wait_console("LITHE-GUEST irq-to=", HOTPLUG_TIMEOUT);
    g.send("disk-write 3 16");
    g.wait_console("LITHE-GUEST disk-write ok", HOTPLUG_TIMEOUT);
    g.send("irq-count virtio0");
    let counts = g.wait_console("LITHE-GUEST irq-count ", HOTPLUG_TIMEOUT);
    let per_cpu: Vec<u64> = counts.split_whitespace().skip(3).take(2).map(|n| n.parse().unwrap_or(0)).collect();
    assert!(per_cpu.len() == 2 && per_cpu[1] > 0, "the disk's interrupts reached vCPU 1: {counts}");
    // vCPU 1 goes while the disk is busy: Linux moves the interrupt, lithe's
    // IOAPIC follows the new route, the write completes.
    g.send(&format!("disk-write 7 {SECTORS}"));
    let (s, r) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 1 }));
    assert_eq!(s, 204, "{r}");
    let wrote = g.wait_console(&format!("LITHE-GUEST disk-write ok bytes={}", SECTORS * 512), HOTPLUG_TIMEOUT);
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    g.send(&format!("disk-read 7 {SECTORS}"));
    let read = g.wait_console("LITHE-GUEST disk-read ", HOTPLUG_TIMEOUT);
    assert!(read.contains(&format!("ok bytes={}", SECTORS * 512)), "{read}");
    let (s, r) = g.api("PUT", "vm.resize?wait=true", serde_json::json!({ "desired_vcpus": 2 }));
    assert_eq!((s, r["complete"].as_bool()), (200, Some(true)), "the parked vCPU comes back: {r}");
    let mark = g.console_lines();
    g.send("rng 16");
    g.wait_console_after(mark, "LITHE-GUEST rng bytes=16 ", HOTPLUG_TIMEOUT);
    let (_, counters) = g.api("GET", "vm.counters", serde_json::Value::Null);
    let blk = &counters["virtio-blk0"];
    assert!(blk["write_bytes"].as_u64() >= Some((SECTORS * 512) as u64), "{counters}");
    assert!(blk["flush_ops"].as_u64() >= Some(1), "the guest's fsync reached the device as a FLUSH: {counters}");
    assert!(counters["virtio-rng"]["read_bytes"].as_u64() >= Some(128), "{counters}");

    // The guest reported only after its fsync: kill -9 now, and the data
    // must be in the file.
    // SAFETY: kill(2) on the child's pid, which the test owns and has not reaped.
    assert_eq!(unsafe { libc::kill(g.child.id() as i32, libc::SIGKILL) }, 0);
    let _ = g.child.wait();
    let on_disk = std::fs::read(&image).unwrap();
    assert!(on_disk[..SECTORS * 512] == disk_pattern(7, SECTORS * 512)[..], "the flushed pattern is in the image");
    drop(g);

    // A new VM on the same image, read-only and with O_DIRECT (no host page
    // cache: the bytes come from the file itself): it reads the pattern back
    // and cannot change it. This VM boots from a root disk, as Kata boots its
    // guest image: no initramfs, the guest image's ext4 disk as /dev/vdb.
    let disk = format!("path={},readonly=on,direct=on", image.display());
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::copy(tests::GuestImage::locate().rootfs, &rootfs).unwrap();
    let root = format!("path={}", rootfs.display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=2",
        with_kernel: true,
        no_initramfs: true,
        args: &["--disk", &disk, "--disk", &root],
        extra_cmdline: "root=/dev/vdb rw init=/init",
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    g.send(&format!("disk-read 7 {SECTORS}"));
    let read = g.wait_console("LITHE-GUEST disk-read ", HOTPLUG_TIMEOUT);
    assert!(read.contains(&format!("ok bytes={}", SECTORS * 512)), "{read}");
    assert_eq!(read.rsplit("sum=").next(), wrote.rsplit("sum=").next(), "the same bytes: {wrote} / {read}");
    let mark = g.console_lines();
    g.send("disk-write 8 1");
    // Linux refuses to open a read-only disk for writing; had it not, the
    // device would fail the write.
    let refused = g.wait_console_after(mark, "LITHE-GUEST ", HOTPLUG_TIMEOUT);
    assert!(
        refused.contains("cannot open /dev/vda") || refused.contains("disk-write failed"),
        "a read-only disk took a write: {refused}"
    );
    assert_eq!(std::fs::read(&image).unwrap(), on_disk, "the read-only disk is unchanged");
}
