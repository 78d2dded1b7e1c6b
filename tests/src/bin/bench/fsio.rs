//! The virtio-fs section: per VMM, per run, a fresh virtiofsd (the same
//! binary and flags for every VMM: Debian's /usr/lib/qemu/virtiofsd,
//! `cache=none`, so every read crosses the device) shares a folder with one
//! file of pseudo-random bytes; the VM boots with shared memory, the share
//! and hybrid vsock, and the guest's iobench mounts the share and reads the
//! file through, timing it in the guest. The VMM's CPU (every thread but
//! the vCPUs', not virtiofsd's; QEMU's vsock backend's, as in io.rs) is
//! read around the read. QEMU's share is its `vhost-user-fs-pci`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::io::Guest;
use crate::vm::{scratch, Backend, Setup, Vmm};
use crate::Samples;

const FILE_BYTES: u64 = 64 << 20;
const MIB: u64 = 1 << 20;
/// The fs figures are keyed with this `max`.
pub const FS_KEY: u32 = 2;

pub const FIGURES: [&str; 3] = [
    "virtio-fs sequential read, 1 MiB requests (MB/s)",
    "VMM CPU per MiB read over virtio-fs (µs)",
    "lithe's share: vCPU exits to the VMM per MiB read",
];

/// vCPU 0's exits to lithe so far (`vm.counters`), lithe only.
fn exits(guest: &Guest) -> Option<u64> {
    guest.vm.counters()?.get("vcpus")?.get("vcpu0_exits")?.as_u64()
}

fn virtiofsd(dir: &Path, shared: &Path) -> Result<(Backend, std::path::PathBuf), String> {
    let bin = ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or("no virtiofsd (Debian: qemu-system-common)")?;
    let socket = dir.join("virtiofsd.sock");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--socket-path={}", socket.display())).args([
        "-o",
        &format!("source={}", shared.display()),
        "-o",
        "cache=none",
    ]);
    let backend = Backend::start(cmd, &dir.join("virtiofsd.log"), &socket)?;
    Ok((backend, socket))
}

pub fn run(setup: &Setup, vmm: Vmm, file: &Path, out: &mut Samples) -> Result<(), String> {
    let dir = scratch(&format!("{}-fs", vmm.name()))?;
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
    std::fs::copy(file, shared.join("data.bin")).map_err(|e| format!("copying the file: {e}"))?;
    let (_virtiofsd, socket) = virtiofsd(&dir, &shared)?;
    let devices = match vmm {
        Vmm::Qemu => vec![
            "-chardev".to_string(),
            format!("socket,id=fs0,path={}", socket.display()),
            "-device".to_string(),
            "vhost-user-fs-pci,chardev=fs0,tag=bench,queue-size=1024".to_string(),
        ],
        _ => vec!["--fs".to_string(), format!("tag=bench,socket={},num_queues=1,queue_size=1024", socket.display())],
    };
    let (guest, mut agent) = Guest::boot(setup, vmm, &dir, devices, "size=256M,shared=on")?;
    agent.call("mount bench", 0)?;
    // The counters are read outside the CPU window: answering them is lithe's work too.
    let exits0 = exits(&guest);
    let cpu0 = guest.cpu_ns();
    let (bytes, us) = agent.call(&format!("fsread {MIB} /share/data.bin"), 0)?;
    let cpu = guest.cpu_ns().saturating_sub(cpu0);
    let exits1 = exits(&guest);
    if bytes != FILE_BYTES {
        return Err(format!("the guest read {bytes} bytes of {FILE_BYTES}"));
    }
    out.entry((FIGURES[0], FS_KEY, vmm)).or_default().push(bytes as f64 / us as f64);
    out.entry((FIGURES[1], FS_KEY, vmm)).or_default().push(cpu as f64 / (bytes / MIB) as f64 / 1e3);
    if let (Some(a), Some(b)) = (exits0, exits1) {
        out.entry((FIGURES[2], FS_KEY, vmm)).or_default().push(b.saturating_sub(a) as f64 / (bytes / MIB) as f64);
    }
    drop(guest);
    Ok(())
}

/// The file every run reads: pseudo-random bytes.
pub fn make_file(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..FILE_BYTES / MIB {
        for b in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).map_err(|e| e.to_string())?;
    }
    Ok(())
}
