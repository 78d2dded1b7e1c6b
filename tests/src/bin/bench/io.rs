//! The I/O section: per VMM, per run, one VM with a fresh copy of the same
//! raw disk image and a hybrid-vsock socket, booted with `lithe_bench=io`
//! so the guest's init starts /bin/iobench (guest-images/iobench.c), a
//! vsock service on port 1025. The bench dials it as Kata dials its agent
//! (`CONNECT 1025`) and runs one phase per command: the guest times the
//! disk phases itself (what the guest sees), the bench times the vsock
//! stream, and between phases it reads the VMM's CPU time (every thread
//! but the vCPUs', from /proc, every VMM alike) and lithe's own counters.
//!
//! QEMU has no hybrid vsock of its own: its `vhost-user-vsock-pci` talks
//! to rust-vmm's vhost-device-vsock, which serves the same `CONNECT`
//! socket. That backend does QEMU's vsock data path, so its CPU is counted
//! as QEMU's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::vm::{process_cpu_ns, qemu_vsock, scratch, vmm_cpu_ns, Backend, Setup, Vm, Vmm};
use crate::Samples;

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const PHASE_LIMIT: Duration = Duration::from_secs(300);
const PORT: u32 = 1025;
pub const DISK_BYTES: u64 = 256 << 20;
const SEQ_BYTES: u64 = 64 << 20;
const MIB: u64 = 1 << 20;
const QD1_OPS: u64 = 2000;
const QD16_OPS: u64 = 4000;
const VSOCK_BYTES: u64 = 64 << 20;
/// The I/O figures are keyed with this `max` (the VMs have one vCPU).
pub const IO_KEY: u32 = 0;

pub const FIGURES: [&str; 10] = [
    "sequential write, 1 MiB requests (MB/s)",
    "sequential read, 1 MiB requests (MB/s)",
    "4 KiB random read, QD1 (IOPS)",
    "4 KiB random read, QD16 (IOPS)",
    "vsock host→guest stream (MB/s)",
    "VMM CPU per 4 KiB read, QD1 (µs)",
    "VMM CPU per 4 KiB read, QD16 (µs)",
    "VMM CPU per MiB over vsock (µs)",
    "lithe's share: device thread per 4 KiB read, QD16 (µs)",
    "lithe's share: device requests per 1 MiB sequential read",
];

/// The disk image every run starts from: pseudo-random bytes, so neither
/// VMM reads holes.
pub fn make_image(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..DISK_BYTES / MIB {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.sync_all().map_err(|e| e.to_string())
}

/// A connection to the guest's iobench through the hybrid-vsock socket.
pub struct Agent {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Agent {
    pub fn dial(socket: &Path) -> Result<Agent, String> {
        let w = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
        w.set_read_timeout(Some(PHASE_LIMIT)).map_err(|e| e.to_string())?;
        let r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
        let mut a = Agent { w, r };
        a.send(format!("CONNECT {PORT}\n").as_bytes())?;
        let ok = a.line()?;
        if !ok.starts_with("OK ") {
            return Err(format!("CONNECT {PORT} was answered {ok:?}"));
        }
        Ok(a)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.w.write_all(bytes).map_err(|e| format!("writing to the guest: {e}"))
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        self.r.read_line(&mut l).map_err(|e| format!("reading the guest's answer: {e}"))?;
        if l.is_empty() {
            return Err("the guest closed the connection".into());
        }
        Ok(l.trim().to_string())
    }

    /// Sends a command (and `payload` after it); the guest's `ok ops= us=`.
    pub fn call(&mut self, cmd: &str, payload: u64) -> Result<(u64, u64), String> {
        self.send(format!("{cmd}\n").as_bytes())?;
        let chunk = vec![0x5au8; 64 << 10];
        let mut left = payload;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            self.send(&chunk[..n])?;
            left -= n as u64;
        }
        let answer = self.line()?;
        let field =
            |k: &str| answer.split_whitespace().find_map(|f| f.strip_prefix(k)).and_then(|v| v.parse::<u64>().ok());
        match (answer.starts_with("ok "), field("ops="), field("us=")) {
            (true, Some(ops), Some(us)) if us > 0 => Ok((ops, us)),
            _ => Err(format!("{cmd}: the guest answered {answer:?}")),
        }
    }
}

/// lithe's block device counters: (device-thread ns, read ops).
fn block_counters(vm: &Vm) -> Option<(u64, u64)> {
    let v = vm.counters()?;
    let dev = v.as_object()?.values().find(|d| d.get("device_cpu_ns").is_some())?;
    Some((dev["device_cpu_ns"].as_u64()?, dev["read_ops"].as_u64()?))
}

/// A booted VM with hybrid vsock, and QEMU's vsock backend if it has one.
pub struct Guest {
    pub vm: Vm,
    pub backend: Option<Backend>,
}

impl Guest {
    /// Boots `vmm` with `devices` (lithe's and Cloud Hypervisor's flags, or
    /// QEMU's arguments), hybrid vsock at `dir/vsock.sock` and
    /// `lithe_bench=io`; waits for iobench and dials it.
    pub fn boot(
        setup: &Setup,
        vmm: Vmm,
        dir: &Path,
        devices: Vec<String>,
        memory: &str,
    ) -> Result<(Guest, Agent), String> {
        let vsock = dir.join("vsock.sock");
        // Cloud Hypervisor's and QEMU's devices are virtio-pci: the same
        // kernel, with PCI probing left on.
        let cmdline = format!("{} lithe_bench=io", setup.device_cmdline(vmm)?);
        let (backend, mut extra) = match vmm {
            Vmm::Qemu => {
                let (b, args) = qemu_vsock(setup, dir, &vsock)?;
                (Some(b), args)
            }
            _ => (None, vec!["--vsock".to_string(), format!("cid=3,socket={}", vsock.display())]),
        };
        extra.extend(devices);
        let mut vm = Vm::launch_with(setup, vmm, dir, 1, &cmdline, &extra, None, memory)?;
        vm.wait_serial(0, "LITHE-GUEST iobench listening", BOOT_LIMIT)?;
        let agent = Agent::dial(&vsock)?;
        Ok((Guest { vm, backend }, agent))
    }

    /// The VMM's CPU so far (ns): every thread but the vCPUs', and all of
    /// QEMU's vsock backend.
    pub fn cpu_ns(&self) -> u64 {
        vmm_cpu_ns(self.vm.pid) + self.backend.as_ref().map_or(0, |b| process_cpu_ns(b.child.id()))
    }
}

/// One VMM, one run: boot with the disk and vsock, then each phase.
pub fn run(setup: &Setup, vmm: Vmm, image: &Path, out: &mut Samples) -> Result<(), String> {
    let dir = scratch(&format!("{}-io", vmm.name()))?;
    let disk = dir.join("disk.img");
    std::fs::copy(image, &disk).map_err(|e| format!("copying the image: {e}"))?;
    let (devices, memory) = match vmm {
        // Buffered, as the other two (QEMU's defaults, spelled out); its
        // vhost-user vsock needs the guest's memory shared.
        Vmm::Qemu => (
            vec![
                "-drive".to_string(),
                format!("file={},format=raw,if=none,id=disk0,cache=writeback,aio=threads", disk.display()),
                "-device".to_string(),
                "virtio-blk-pci,drive=disk0".to_string(),
            ],
            "size=256M,shared=on",
        ),
        // Explicitly raw, so Cloud Hypervisor lets the guest write sector 0
        // (it refuses that on an image whose type it guessed).
        _ => (vec!["--disk".to_string(), format!("path={},image_type=raw", disk.display())], "size=256M"),
    };
    let (guest, mut agent) = Guest::boot(setup, vmm, &dir, devices, memory)?;
    let vm = &guest.vm;
    let mut put = |what: &'static str, v: f64| out.entry((what, IO_KEY, vmm)).or_default().push(v);

    let (_, us) = agent.call(&format!("write {MIB} {SEQ_BYTES}"), 0)?;
    put(FIGURES[0], SEQ_BYTES as f64 / us as f64);
    let dev0 = block_counters(vm);
    let (_, us) = agent.call(&format!("read {MIB} {SEQ_BYTES}"), 0)?;
    put(FIGURES[1], SEQ_BYTES as f64 / us as f64);
    if let (Some((_, r0)), Some((_, r1))) = (dev0, block_counters(vm)) {
        put(FIGURES[9], r1.saturating_sub(r0) as f64 / (SEQ_BYTES / MIB) as f64);
    }

    for (qd, ops, iops, cpu) in [(1, QD1_OPS, FIGURES[2], FIGURES[5]), (16, QD16_OPS, FIGURES[3], FIGURES[6])] {
        // The counters are read outside the CPU window: answering them is the VMM's work too.
        let dev0 = block_counters(vm);
        let cpu0 = guest.cpu_ns();
        let (done, us) = agent.call(&format!("rand 4096 {qd} {ops} {DISK_BYTES}"), 0)?;
        let cpu1 = guest.cpu_ns();
        let dev1 = block_counters(vm);
        put(iops, done as f64 * 1e6 / us as f64);
        put(cpu, cpu1.saturating_sub(cpu0) as f64 / done as f64 / 1e3);
        if let (16, Some((ns0, r0)), Some((ns1, r1))) = (qd, dev0, dev1) {
            if r1 > r0 {
                put(FIGURES[8], (ns1 - ns0) as f64 / (r1 - r0) as f64 / 1e3);
            }
        }
    }

    let cpu0 = guest.cpu_ns();
    let t = Instant::now();
    agent.call(&format!("sink {VSOCK_BYTES}"), VSOCK_BYTES)?;
    let secs = t.elapsed().as_secs_f64();
    put(FIGURES[4], VSOCK_BYTES as f64 / 1e6 / secs);
    put(FIGURES[7], guest.cpu_ns().saturating_sub(cpu0) as f64 / (VSOCK_BYTES / MIB) as f64 / 1e3);
    Ok(())
}
