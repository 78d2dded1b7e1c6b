//! One VM under one VMM for the bench: started from the command line both
//! VMMs share, talked to over its API socket, stopped (and its scratch
//! folder removed) when dropped; and what /proc says of its threads.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Vmm {
    Lithe,
    CloudHypervisor,
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Lithe => "lithe",
            Vmm::CloudHypervisor => "CH",
            Vmm::Qemu => "QEMU",
        }
    }
}

pub struct Setup {
    pub lithe: PathBuf,
    pub ch: Option<PathBuf>,
    /// qemu-system-x86_64 (Debian's qemu-system-x86).
    pub qemu: Option<PathBuf>,
    /// rust-vmm's vhost-device-vsock (`scripts/deps.sh --bench` builds it
    /// into target/bench-tools): QEMU's hybrid vsock in the io and fs
    /// sections, through its `vhost-user-vsock-pci`.
    pub vsock_backend: Option<PathBuf>,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
}

impl Setup {
    /// The command line for a VM with devices: lithe's are virtio-mmio
    /// (`pci=off`); Cloud Hypervisor's and QEMU's virtio-pci, so the same
    /// kernel keeps PCI probing on.
    pub fn device_cmdline(&self, vmm: Vmm) -> Result<String, String> {
        match vmm {
            Vmm::Lithe => Ok(self.cmdline.clone()),
            Vmm::CloudHypervisor | Vmm::Qemu => {
                Ok(self.cmdline.split_whitespace().filter(|w| *w != "pci=off").collect::<Vec<_>>().join(" "))
            }
        }
    }
}

/// A running VM. Dropping it shuts the VMM down (kill after 20 s) and
/// removes its folder.
pub struct Vm {
    pub child: Child,
    pub pid: u32,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub serial: PathBuf,
    pub started: Instant,
    /// QEMU's monitor (QEMU has no REST API).
    pub qmp: Option<crate::qmp::Qmp>,
}

impl Vm {
    /// Starts `vmm` on the setup's kernel and initramfs with `cmdline`,
    /// `boot=1,max={max}`, 256 MiB, the serial console into a file, and
    /// `extra` arguments (which may name files in `dir`, made beforehand).
    pub fn launch(
        setup: &Setup,
        vmm: Vmm,
        dir: &Path,
        max: u32,
        cmdline: &str,
        extra: &[String],
    ) -> Result<Vm, String> {
        Vm::launch_in(setup, vmm, dir, max, cmdline, extra, None)
    }

    /// As [`Vm::launch`], inside network namespace `netns` (`ip netns exec`
    /// execs the VMM in place, so the child is the VMM).
    pub fn launch_in(
        setup: &Setup,
        vmm: Vmm,
        dir: &Path,
        max: u32,
        cmdline: &str,
        extra: &[String],
        netns: Option<&str>,
    ) -> Result<Vm, String> {
        Vm::launch_with(setup, vmm, dir, max, cmdline, extra, netns, "size=256M")
    }

    /// As [`Vm::launch_in`], with `--memory memory` (both VMMs spell it alike).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_with(
        setup: &Setup,
        vmm: Vmm,
        dir: &Path,
        max: u32,
        cmdline: &str,
        extra: &[String],
        netns: Option<&str>,
        memory: &str,
    ) -> Result<Vm, String> {
        let (socket, serial) = (dir.join("api.sock"), dir.join("serial.log"));
        let bin = match vmm {
            Vmm::Lithe => setup.lithe.clone(),
            Vmm::CloudHypervisor => setup.ch.clone().ok_or("no Cloud Hypervisor")?,
            Vmm::Qemu => return Vm::launch_qemu(setup, dir, max, cmdline, memory, extra, netns),
        };
        let started = Instant::now();
        let mut cmd = command_in(&bin, netns);
        let child = cmd
            .arg("--kernel")
            .arg(&setup.kernel)
            .arg("--initramfs")
            .arg(&setup.initramfs)
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--cpus")
            .arg(format!("boot=1,max={max}"))
            .arg("--memory")
            .arg(memory)
            .arg("--serial")
            .arg(format!("file={}", serial.display()))
            .arg("--console")
            .arg("off")
            .arg("--api-socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("vmm.log")).map_err(|e| e.to_string())?))
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let pid = child.id();
        Ok(Vm { child, pid, dir: dir.to_path_buf(), socket, serial, started, qmp: None })
    }

    /// QEMU with what the other two get: the same kernel, initramfs and
    /// command line, one vCPU of `max`, the memory size, the serial console
    /// into a file; q35 (microvm has no CPU hotplug: QEMU 7.2 does not enable
    /// `query-hotpluggable-cpus` there), KVM, the host's CPU model, no default
    /// devices, and QMP on a Unix socket; `extra` are QEMU's own device
    /// arguments. On kvm_pvm the host CPU model goes without
    /// `arch-capabilities` (QEMU's write of that MSR fails there).
    fn launch_qemu(
        setup: &Setup,
        dir: &Path,
        max: u32,
        cmdline: &str,
        memory: &str,
        extra: &[String],
        netns: Option<&str>,
    ) -> Result<Vm, String> {
        let bin = setup.qemu.clone().ok_or("no QEMU (Debian: qemu-system-x86)")?;
        // size=S[,hotplug_size=H][,shared=on]: QEMU's -m S[,slots=4,maxmem=S+H],
        // and shared memory (what vhost-user backends map) as a memfd.
        let mut size = None;
        let mut room = None;
        let mut shared = false;
        for kv in memory.split(',') {
            match kv.split_once('=') {
                Some(("size", v)) => size = Some(v),
                Some(("hotplug_size", v)) => room = Some(v),
                Some(("shared", "on")) => shared = true,
                _ => return Err(format!("QEMU in the bench takes size, hotplug_size and shared=on, not {memory:?}")),
            }
        }
        let size = size.ok_or("no memory size")?;
        let mib = |v: &str| v.strip_suffix('M').and_then(|n| n.parse::<u64>().ok());
        let m = match room {
            Some(r) => {
                let (s, r) = (mib(size).ok_or("sizes in M")?, mib(r).ok_or("sizes in M")?);
                format!("{size},slots=4,maxmem={}M", s + r)
            }
            None => size.to_string(),
        };
        let ram = match shared {
            true => vec![
                "-object".to_string(),
                format!("memory-backend-memfd,id=ram,size={size},share=on"),
                "-machine".to_string(),
                "memory-backend=ram".to_string(),
            ],
            false => Vec::new(),
        };
        let (socket, serial) = (dir.join("qmp.sock"), dir.join("serial.log"));
        let cpu = if Path::new("/sys/module/kvm_pvm").exists() { "host,arch-capabilities=off" } else { "host" };
        let started = Instant::now();
        let mut cmd = command_in(&bin, netns);
        let child = cmd
            .args(["-M", "q35,accel=kvm", "-cpu", cpu])
            .args(["-smp", &format!("1,maxcpus={max}"), "-m", &m])
            .args(&ram)
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            // Names its threads ("CPU n/KVM"), so vCPU threads can be told apart.
            .args(["-name", "bench,debug-threads=on"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&setup.kernel)
            .arg("-initrd")
            .arg(&setup.initramfs)
            .arg("-append")
            .arg(cmdline)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("vmm.log")).map_err(|e| e.to_string())?))
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let pid = child.id();
        let mut vm = Vm { child, pid, dir: dir.to_path_buf(), socket: socket.clone(), serial, started, qmp: None };
        vm.qmp = Some(crate::qmp::Qmp::connect(&socket, Duration::from_secs(20))?);
        Ok(vm)
    }

    /// Asks the VMM for `bytes` of RAM: `desired_ram` for lithe and Cloud
    /// Hypervisor; a DIMM added or removed over QMP for QEMU. The status of
    /// the answer (QMP: 200 or 400).
    pub fn set_memory(&mut self, bytes: u64) -> Result<(u16, String), String> {
        if let Some(q) = self.qmp.as_mut() {
            return Ok(match q.set_memory(bytes) {
                Ok(()) => (200, String::new()),
                Err(e) => (400, e),
            });
        }
        self.http("PUT", "vm.resize", &format!(r#"{{"desired_ram":{bytes}}}"#))
    }

    /// RAM the VMM says the VM has (`vm.info`'s memory.size; QMP's summary).
    pub fn memory_size(&mut self) -> Option<u64> {
        if let Some(q) = self.qmp.as_mut() {
            return q.memory_size().ok();
        }
        let (s, body) = self.http("GET", "vm.info", "").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| s == 200)?;
        v["config"]["memory"]["size"].as_u64()
    }

    /// Asks the VMM for `n` vCPUs: `vm.resize` for lithe and Cloud
    /// Hypervisor, `device_add`/`device_del` over QMP for QEMU.
    pub fn set_vcpus(&mut self, n: usize) -> Result<(), String> {
        if let Some(q) = self.qmp.as_mut() {
            return q.set_vcpus(n);
        }
        let (s, b) = self.http("PUT", "vm.resize", &format!(r#"{{"desired_vcpus":{n}}}"#))?;
        if s >= 300 {
            return Err(format!("resize to {n}: {s} {b}"));
        }
        Ok(())
    }

    pub fn http(&self, method: &str, endpoint: &str, body: &str) -> Result<(u16, String), String> {
        if self.qmp.is_some() {
            return Err(format!("{endpoint}: QEMU has no REST API"));
        }
        http(&self.socket, method, endpoint, body)
    }

    /// Waits until the serial console has, after byte `from`, a line
    /// containing `needle`; returns where the file ended.
    pub fn wait_serial(&mut self, from: usize, needle: &str, limit: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = std::fs::read(&self.serial).unwrap_or_default();
            if text.len() > from && String::from_utf8_lossy(&text[from..]).contains(needle) {
                return Ok(text.len());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the VMM exited ({status}) before the guest printed {needle:?}"));
            }
            if Instant::now() > deadline {
                return Err(format!("the guest did not print {needle:?} within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole `vm.counters` answer (lithe's; Cloud Hypervisor has one too).
    pub fn counters(&self) -> Option<serde_json::Value> {
        let (status, body) = self.http("GET", "vm.counters", "").ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        match self.qmp.as_mut() {
            Some(q) => drop(q.execute("quit", serde_json::Value::Null)),
            None => drop(self.http("PUT", "vmm.shutdown", "")),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A helper process the VMM talks to (virtiofsd, vhost-device-vsock),
/// killed when dropped.
pub struct Backend {
    pub child: Child,
}

impl Backend {
    /// Starts `cmd` (its stderr into `log`) and waits for it to listen on
    /// `socket`.
    pub fn start(mut cmd: Command, log: &Path, socket: &Path) -> Result<Backend, String> {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).map_err(|e| e.to_string())?))
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?;
        let mut backend = Backend { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Ok(Some(status)) = backend.child.try_wait() {
                return Err(format!("{name} exited ({status}) before it listened"));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not listen on {}", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(backend)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's hybrid vsock: vhost-device-vsock serving guest CID 3, its
/// vhost-user socket for QEMU and, at `uds`, the Unix socket host programs
/// dial with `CONNECT port` (as lithe's and Cloud Hypervisor's). The
/// backend, and QEMU's arguments for it.
pub fn qemu_vsock(setup: &Setup, dir: &Path, uds: &Path) -> Result<(Backend, Vec<String>), String> {
    let bin = setup.vsock_backend.as_ref().ok_or("no vhost-device-vsock (scripts/deps.sh --bench builds it)")?;
    let socket = dir.join("vhost-vsock.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("--guest-cid").arg("3").arg("--socket").arg(&socket).arg("--uds-path").arg(uds);
    let backend = Backend::start(cmd, &dir.join("vhost-device-vsock.log"), &socket)?;
    let args = vec![
        "-chardev".to_string(),
        format!("socket,id=vsock0,path={}", socket.display()),
        "-device".to_string(),
        "vhost-user-vsock-pci,chardev=vsock0".to_string(),
    ];
    Ok((backend, args))
}

/// CPU time (ns) of every thread of process `pid`.
pub fn process_cpu_ns(pid: u32) -> u64 {
    threads(pid).iter().map(|(_, ns)| ns).sum()
}

/// `bin`, run inside network namespace `netns` if given (`ip netns exec`
/// execs it in place, so the child is the VMM).
fn command_in(bin: &Path, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// A fresh scratch folder for one VM.
pub fn scratch(name: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("lithe-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn http(socket: &Path, method: &str, endpoint: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // Read the head, then exactly Content-Length bytes (Cloud Hypervisor's
    // server keeps the connection open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= len {
                let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((status, rest[..len].to_string()));
            }
        }
    }
    Err(format!("{endpoint}: connection closed early"))
}

pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Each thread's name and its time on a CPU so far (ns, from schedstat).
fn threads(pid: u32) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let ns = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            Some((comm.trim().to_string(), ns.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// A vCPU thread's name: lithe's and Cloud Hypervisor's `vcpuN`, QEMU's `CPU N/KVM`.
fn is_vcpu(name: &str) -> bool {
    name.starts_with("vcpu") || (name.starts_with("CPU ") && name.ends_with("/KVM"))
}

pub fn vcpu_threads(pid: u32) -> usize {
    threads(pid).iter().filter(|(name, _)| is_vcpu(name)).count()
}

/// CPU time (ns) of every thread of the VMM except its vCPU threads: what
/// the VMM itself spends, both VMMs counted the same way. A thread that
/// ended meanwhile is not counted.
pub fn vmm_cpu_ns(pid: u32) -> u64 {
    threads(pid).iter().filter(|(name, _)| !is_vcpu(name)).map(|(_, ns)| ns).sum()
}
