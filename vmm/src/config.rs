//! The VM's configuration, shared by the CLI and the `vm.create` API call,
//! and the parsers for the CLI's `key=value` flags.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::arch::topology::CpuTopology;
use crate::arch::topology::Topology;

/// Most vCPUs lithe supports, when KVM allows as many: what the DSDT (about
/// 123 bytes per possible vCPU) fits below the BIOS area (acpi/mod.rs tests
/// it). APIC ids past 254 use x2APIC (arch/x2apic.rs).
pub const MAX_SUPPORTED_VCPUS: u32 = 2048;
/// Smallest and largest guest memory sizes accepted.
pub const MIN_MEMORY: u64 = 32 << 20;
pub const MAX_MEMORY: u64 = 1 << 40;

/// Kernel command line used when none is given: generic, no workarounds.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// What is wrong with a configuration. The message names no flag or field:
/// the CLI says which flag ([`ConfigError::flag`]), the API which field of
/// `VmConfig` ([`ConfigError::field`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0}")]
    Cpus(String),
    #[error("{0}")]
    Memory(String),
    #[error("{0}")]
    Serial(String),
    #[error("{path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Initramfs { path: PathBuf, reason: String },
    #[error("{0}")]
    Cmdline(String),
    #[error("{0}")]
    Disk(String),
    #[error("{0}")]
    Rng(String),
    #[error("{0}")]
    Vsock(String),
    #[error("{0}")]
    Net(String),
    #[error("{0}")]
    Fs(String),
}

impl ConfigError {
    /// The command-line flag it concerns.
    pub fn flag(&self) -> &'static str {
        match self {
            ConfigError::Cpus(_) => "--cpus",
            ConfigError::Memory(_) => "--memory",
            ConfigError::Serial(_) => "--serial",
            ConfigError::Kernel { .. } => "--kernel",
            ConfigError::Initramfs { .. } => "--initramfs",
            ConfigError::Cmdline(_) => "--cmdline",
            ConfigError::Disk(_) => "--disk",
            ConfigError::Rng(_) => "--rng",
            ConfigError::Vsock(_) => "--vsock",
            ConfigError::Net(_) => "--net",
            ConfigError::Fs(_) => "--fs",
        }
    }

    /// The `VmConfig` field it concerns (Cloud Hypervisor's names).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Cpus(_) => "cpus",
            ConfigError::Memory(_) => "memory",
            ConfigError::Serial(_) => "serial",
            ConfigError::Kernel { .. } => "payload.kernel",
            ConfigError::Initramfs { .. } => "payload.initramfs",
            ConfigError::Cmdline(_) => "payload.cmdline",
            ConfigError::Disk(_) => "disks",
            ConfigError::Rng(_) => "rng",
            ConfigError::Vsock(_) => "vsock",
            ConfigError::Net(_) => "net",
            ConfigError::Fs(_) => "fs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
    /// How long the guest gets to eject a vCPU before the removal is rolled back.
    #[serde(default = "default_eject_timeout_ms")]
    pub eject_timeout_ms: u64,
    /// Cloud Hypervisor's `cpus.topology`: where each vCPU sits, hence its
    /// APIC id, CPUID and MADT entry (arch/topology.rs). None: one package
    /// of `max` single-thread cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<CpuTopology>,
    /// Expose the host's virtualization extensions (VMX/SVM) to the guest.
    #[serde(default = "yes")]
    pub nested: bool,
}

impl CpusConfig {
    /// Where each vCPU sits (its APIC id, CPUID and MADT entry follow).
    pub fn layout(&self) -> Topology {
        Topology::of(self.topology, self.max_vcpus)
    }
}

fn yes() -> bool {
    true
}

/// Default for [`CpusConfig::eject_timeout_ms`]: generous, slow guests take seconds.
pub const DEFAULT_EJECT_TIMEOUT_MS: u64 = 120_000;
const MAX_EJECT_TIMEOUT_MS: u64 = 3_600_000;

fn default_eject_timeout_ms() -> u64 {
    DEFAULT_EJECT_TIMEOUT_MS
}

impl CpusConfig {
    pub fn new(boot_vcpus: u32, max_vcpus: u32) -> Self {
        CpusConfig { boot_vcpus, max_vcpus, eject_timeout_ms: DEFAULT_EJECT_TIMEOUT_MS, topology: None, nested: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Room for memory hotplug (Cloud Hypervisor's `hotplug_size`): how far
    /// `desired_ram` may grow the guest past `size`, in whole 128 MiB blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Ask for transparent huge pages on guest RAM (`madvise(MADV_HUGEPAGE)`).
    #[serde(default = "yes")]
    pub thp: bool,
    /// Guest RAM from one memfd mapped shared (for vhost-user backends).
    #[serde(default)]
    pub shared: bool,
}

impl MemoryConfig {
    pub fn new(size: u64) -> MemoryConfig {
        MemoryConfig { size, hotplug_size: None, thp: true, shared: false }
    }
}

/// Platform capacities that only matter to devices lithe does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// PCI segments (Kata asks for 2). lithe has no PCI devices: stored and
    /// reported, nothing more.
    pub num_pci_segments: u16,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig { num_pci_segments: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum SerialConfig {
    /// The VMM's stdout (and stdin as input).
    #[default]
    Tty,
    /// Appended to a file.
    File { file: PathBuf },
    /// No serial device output.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// Everything needed to build and boot a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub payload: PayloadConfig,
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub platform: PlatformConfig,
    #[serde(default)]
    pub devices: DevicesConfig,
}

/// The virtio devices a VM gets (virtio-mmio, in this order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DevicesConfig {
    pub disks: Vec<DiskConfig>,
    pub rng: Option<RngConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
}

/// A virtio-fs device served by a vhost-user backend (Cloud Hypervisor's
/// `FsConfig`): the guest mounts it by `tag`; the backend listens on `socket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
    /// Request queues (the high-priority queue comes on top).
    #[serde(default = "one")]
    pub num_queues: u16,
    #[serde(default = "fs_queue_size")]
    pub queue_size: u16,
    #[serde(default)]
    pub id: Option<String>,
}

fn one() -> u16 {
    1
}

/// Cloud Hypervisor's default, and the largest a split virtqueue may be.
pub const FS_QUEUE_SIZE: u16 = 1024;
/// Most request queues a virtio-fs device gets.
pub const FS_MAX_QUEUES: u16 = 8;

fn fs_queue_size() -> u16 {
    FS_QUEUE_SIZE
}

impl FsConfig {
    pub fn new(tag: &str, socket: impl Into<PathBuf>) -> FsConfig {
        FsConfig { tag: tag.into(), socket: socket.into(), num_queues: 1, queue_size: FS_QUEUE_SIZE, id: None }
    }

    /// The values alone (the socket and memory are checked with the VM).
    pub fn check(&self) -> Result<(), String> {
        if self.tag.is_empty() || self.tag.len() > 36 {
            return Err(format!("tag={:?}: 1 to 36 bytes", self.tag));
        }
        if self.num_queues == 0 || self.num_queues > FS_MAX_QUEUES {
            return Err(format!("num_queues={}: 1 to {FS_MAX_QUEUES}", self.num_queues));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size > FS_QUEUE_SIZE {
            return Err(format!("queue_size={}: a power of two up to {FS_QUEUE_SIZE}", self.queue_size));
        }
        Ok(())
    }
}

/// A virtio-net device on a TAP (Cloud Hypervisor's `NetConfig` fields
/// lithe honours). One queue pair, whatever `num_queues` asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The TAP's name: opened (created, if lithe may) when the VM is built.
    #[serde(default)]
    pub tap: Option<String>,
    /// An open TAP fd lithe inherited (`--net fd=N`) instead of a name.
    #[serde(default)]
    pub fd: Option<i32>,
    /// The guest's MAC address (a random locally administered one when not given).
    pub mac: String,
    #[serde(default)]
    pub id: Option<String>,
    /// Offer the guest checksum offload, and with it TSO.
    #[serde(default = "yes")]
    pub offload_csum: bool,
    #[serde(default = "yes")]
    pub offload_tso: bool,
}

impl NetConfig {
    /// A device on TAP `tap` with a random MAC and every offload offered.
    pub fn on_tap(tap: &str) -> NetConfig {
        NetConfig {
            tap: Some(tap.into()),
            fd: None,
            mac: random_mac(),
            id: None,
            offload_csum: true,
            offload_tso: true,
        }
    }

    /// The MAC's six bytes.
    pub fn mac_bytes(&self) -> Result<[u8; 6], String> {
        parse_mac(&self.mac)
    }
}

/// `aa:bb:cc:dd:ee:ff`: a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("mac={s:?}: expected six hex bytes separated by ':'"));
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("mac={s:?}: expected six hex bytes separated by ':'"));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("mac={s:?}: {p:?} is not a hex byte"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac={s:?} is a multicast address"));
    }
    Ok(mac)
}

/// A random locally administered unicast MAC, as Cloud Hypervisor gives a
/// device without one.
pub fn random_mac() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // No entropy: still a valid, locally administered address.
        b = [0x02, 0x4c, 0x49, 0x54, 0x48, std::process::id() as u8];
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// Hybrid vsock: the guest's CID and the host's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
}

/// A virtio-blk disk on a raw image file (Cloud Hypervisor's `DiskConfig`
/// fields lithe honours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// Open with `O_DIRECT` (no host page cache).
    #[serde(default)]
    pub direct: bool,
    #[serde(default)]
    pub id: Option<String>,
    /// What the guest's `GET_ID` reads (`/sys/block/vdX/serial`).
    #[serde(default)]
    pub serial: Option<String>,
}

impl DiskConfig {
    pub fn new(path: impl Into<PathBuf>) -> DiskConfig {
        DiskConfig { path: path.into(), readonly: false, direct: false, id: None, serial: None }
    }
}

/// virtio-rng, filled from `src`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngConfig {
    pub src: PathBuf,
}

/// Cloud Hypervisor's default entropy source.
pub const DEFAULT_RNG_SRC: &str = "/dev/urandom";

impl VmConfig {
    /// Checks values and that the files exist; `kvm` is what the host's KVM allows.
    pub fn validate(&self, kvm: KvmLimits) -> Result<(), ConfigError> {
        validate_cpus(&self.cpus, kvm)?;
        validate_memory(self.memory.size)?;
        let check = |p: &PathBuf| -> Result<(), String> {
            let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
            if !meta.is_file() {
                return Err("not a regular file".into());
            }
            Ok(())
        };
        check(&self.payload.kernel)
            .map_err(|reason| ConfigError::Kernel { path: self.payload.kernel.clone(), reason })?;
        for (i, d) in self.devices.disks.iter().enumerate() {
            let opened = std::fs::OpenOptions::new().read(true).write(!d.readonly).open(&d.path);
            match opened.and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
                Ok(_) => return Err(ConfigError::Disk(format!("disk {i}: {}: not a file", d.path.display()))),
                Err(e) => return Err(ConfigError::Disk(format!("disk {i}: {}: {e}", d.path.display()))),
            }
        }
        if let Some(v) = &self.devices.vsock {
            // 0, 1 and 2 are the hypervisor, local and host; u32::MAX is "any".
            if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::Vsock(format!("cid={} must be between 3 and 4294967294", v.cid)));
            }
            let dir = v.socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                return Err(ConfigError::Vsock(format!("socket {}: no such directory", v.socket.display())));
            }
        }
        for (i, n) in self.devices.net.iter().enumerate() {
            n.mac_bytes().map_err(|e| ConfigError::Net(format!("net {i}: {e}")))?;
            match (&n.tap, n.fd) {
                (Some(_), None) => {}
                (None, Some(fd)) => {
                    // SAFETY: F_GETFD only asks whether `fd` is open.
                    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                        return Err(ConfigError::Net(format!("net {i}: fd={fd} is not an open file descriptor")));
                    }
                }
                _ => return Err(ConfigError::Net(format!("net {i}: give either tap= or fd=, one of them"))),
            }
        }
        for (i, f) in self.devices.fs.iter().enumerate() {
            f.check().map_err(|e| ConfigError::Fs(format!("fs {i}: {e}")))?;
            if !self.memory.shared {
                return Err(ConfigError::Fs(format!(
                    "fs {i}: needs memory.shared=on (its vhost-user backend maps guest memory)"
                )));
            }
            let is_socket = std::fs::metadata(&f.socket).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            });
            if !is_socket {
                return Err(ConfigError::Fs(format!(
                    "fs {i}: socket {}: no listening socket there",
                    f.socket.display()
                )));
            }
        }
        if let Some(r) = &self.devices.rng {
            std::fs::File::open(&r.src).map_err(|e| ConfigError::Rng(format!("src {}: {e}", r.src.display())))?;
        }
        if let Some(i) = &self.payload.initramfs {
            check(i).map_err(|reason| ConfigError::Initramfs { path: i.clone(), reason })?;
        }
        if self.payload.cmdline.len() >= crate::memory::CMDLINE_MAX_SIZE {
            return Err(ConfigError::Cmdline(format!(
                "{} bytes is longer than the {} the boot protocol allows",
                self.payload.cmdline.len(),
                crate::memory::CMDLINE_MAX_SIZE - 1
            )));
        }
        if self.payload.cmdline.contains('\0') {
            return Err(ConfigError::Cmdline("contains a NUL byte".into()));
        }
        if let SerialConfig::File { file } = &self.serial {
            if file.as_os_str().is_empty() {
                return Err(ConfigError::Serial("file= needs a path".into()));
            }
        }
        Ok(())
    }
}

/// What the host's KVM allows: how many vCPUs (`KVM_CAP_MAX_VCPUS`) and
/// the ids they may have (`KVM_CAP_MAX_VCPU_ID`: lithe's KVM vCPU id is the
/// APIC id, so this bounds the topology's highest APIC id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmLimits {
    pub max_vcpus: u32,
    /// Exclusive: ids go up to `max_vcpu_id - 1`.
    pub max_vcpu_id: u32,
}

impl KvmLimits {
    pub const fn new(max_vcpus: u32, max_vcpu_id: u32) -> Self {
        KvmLimits { max_vcpus, max_vcpu_id }
    }

    pub fn of(kvm: &kvm_ioctls::Kvm) -> Self {
        let to_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        KvmLimits::new(to_u32(kvm.get_max_vcpus()), to_u32(kvm.get_max_vcpu_id()))
    }

    /// This host's; without /dev/kvm, no limit here (creating the VM reports that error).
    pub fn probe() -> Self {
        kvm_ioctls::Kvm::new().map(|k| KvmLimits::of(&k)).unwrap_or(KvmLimits::new(u32::MAX, u32::MAX))
    }
}

pub fn validate_cpus(c: &CpusConfig, kvm: KvmLimits) -> Result<(), ConfigError> {
    let limit = MAX_SUPPORTED_VCPUS.min(kvm.max_vcpus);
    if c.boot_vcpus == 0 {
        return Err(ConfigError::Cpus("boot must be at least 1".into()));
    }
    if c.max_vcpus < c.boot_vcpus {
        return Err(ConfigError::Cpus(format!("boot={} is larger than max={}", c.boot_vcpus, c.max_vcpus)));
    }
    if c.max_vcpus > limit {
        return Err(ConfigError::Cpus(format!("max={} exceeds the supported limit of {limit}", c.max_vcpus)));
    }
    if let Some(t) = c.topology {
        let parts = [t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages];
        if parts.contains(&0) {
            return Err(ConfigError::Cpus(format!("topology {}: every part must be at least 1", topology_text(t))));
        }
        let total: u64 = parts.iter().map(|&p| u64::from(p)).product();
        if total != u64::from(c.max_vcpus) {
            return Err(ConfigError::Cpus(format!(
                "topology {} makes {total} vCPUs, but max={}",
                topology_text(t),
                c.max_vcpus
            )));
        }
    }
    // Odd topology counts leave gaps in the APIC ids (arch/topology.rs).
    let highest = c.layout().apic_id(c.max_vcpus - 1);
    if highest >= kvm.max_vcpu_id {
        let how =
            c.topology.map_or_else(|| format!("max={}", c.max_vcpus), |t| format!("topology {}", topology_text(t)));
        return Err(ConfigError::Cpus(format!(
            "{how} needs APIC ids up to {highest}, but this host's KVM takes vCPU ids below {}",
            kvm.max_vcpu_id
        )));
    }
    if c.eject_timeout_ms == 0 || c.eject_timeout_ms > MAX_EJECT_TIMEOUT_MS {
        return Err(ConfigError::Cpus(format!(
            "eject_timeout_ms={} must be between 1 and {MAX_EJECT_TIMEOUT_MS}",
            c.eject_timeout_ms
        )));
    }
    Ok(())
}

/// `threads:cores:dies:packages`, as the CLI takes it.
pub fn topology_text(t: CpuTopology) -> String {
    format!("{}:{}:{}:{}", t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages)
}

pub fn validate_memory(size: u64) -> Result<(), ConfigError> {
    if size < MIN_MEMORY {
        return Err(ConfigError::Memory(format!("{size} bytes is less than the minimum of {}M", MIN_MEMORY >> 20)));
    }
    if size > MAX_MEMORY {
        return Err(ConfigError::Memory(format!("{size} bytes is more than the maximum of {}G", MAX_MEMORY >> 30)));
    }
    if !size.is_multiple_of(4096) {
        return Err(ConfigError::Memory(format!("{size} bytes is not a multiple of 4 KiB")));
    }
    Ok(())
}

/// Splits `a=1,b=2` into pairs, rejecting empty and duplicate keys.
fn pairs<'a>(s: &'a str, known: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("expected key=value, got {part:?}"))?;
        if !known.contains(&k) {
            return Err(format!("unknown key {k:?} (expected one of {})", known.join(", ")));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("{k} given twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn on_off(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{k}={v:?}: expected on or off")),
    }
}

/// Cloud Hypervisor's `--disk path=P[,readonly=on][,direct=on][,id=I][,serial=S]`
/// (`num_queues=1`, `image_type=raw` and `pci_segment=N` are accepted: one
/// queue, raw images only, no PCI).
pub fn parse_disk(s: &str) -> Result<DiskConfig, ConfigError> {
    let keys = ["path", "readonly", "direct", "id", "serial", "num_queues", "image_type", "pci_segment"];
    let mut d = DiskConfig::new("");
    for (k, v) in pairs(s, &keys).map_err(ConfigError::Disk)? {
        match k {
            "path" => d.path = PathBuf::from(v),
            "readonly" => d.readonly = on_off(k, v).map_err(ConfigError::Disk)?,
            "direct" => d.direct = on_off(k, v).map_err(ConfigError::Disk)?,
            "id" => d.id = Some(v.to_string()),
            "serial" => d.serial = Some(v.to_string()),
            "num_queues" if v == "1" => {}
            "num_queues" => return Err(ConfigError::Disk(format!("num_queues={v}: lithe's disks have one queue"))),
            "image_type" if v == "raw" => {}
            "image_type" => return Err(ConfigError::Disk(format!("image_type={v}: lithe's disks are raw images"))),
            _ => {} // pci_segment: there is no PCI
        }
    }
    if d.path.as_os_str().is_empty() {
        return Err(ConfigError::Disk("path= is required".into()));
    }
    Ok(d)
}

/// Cloud Hypervisor's `--net tap=NAME|fd=N[,mac=M][,id=I][,offload_csum=on][,offload_tso=on]`
/// (`num_queues` 1 or 2, `queue_size`, `offload_ufo` and `pci_segment` are
/// accepted: one queue pair, no UFO, no PCI). `ip=`/`mask=` are refused:
/// lithe does not set the host side's address.
pub fn parse_net(s: &str) -> Result<NetConfig, ConfigError> {
    let keys = [
        "tap",
        "fd",
        "mac",
        "id",
        "offload_csum",
        "offload_tso",
        "offload_ufo",
        "num_queues",
        "queue_size",
        "pci_segment",
        "ip",
        "mask",
    ];
    let err = ConfigError::Net;
    let mut n = NetConfig::on_tap("");
    n.tap = None;
    for (k, v) in pairs(s, &keys).map_err(err)? {
        match k {
            "tap" => n.tap = Some(v.to_string()),
            "fd" => n.fd = Some(v.parse().map_err(|_| err(format!("fd={v:?} is not a number")))?),
            "mac" => {
                parse_mac(v).map_err(err)?;
                n.mac = v.to_string();
            }
            "id" => n.id = Some(v.to_string()),
            "offload_csum" => n.offload_csum = on_off(k, v).map_err(err)?,
            "offload_tso" => n.offload_tso = on_off(k, v).map_err(err)?,
            "offload_ufo" => {
                on_off(k, v).map_err(err)?;
            }
            "num_queues" if v == "1" || v == "2" => {}
            "num_queues" => return Err(err(format!("num_queues={v}: lithe's net devices have one queue pair"))),
            "queue_size" if v.parse::<u16>().is_ok_and(|q| q.is_power_of_two() && q <= 256) => {}
            "queue_size" => return Err(err(format!("queue_size={v}: a power of two up to 256"))),
            "ip" | "mask" => {
                return Err(err(format!("{k}={v}: lithe does not set the TAP's address; give it with ip(8)")))
            }
            _ => {} // pci_segment: there is no PCI
        }
    }
    Ok(n)
}

/// Cloud Hypervisor's `--fs tag=T,socket=PATH[,num_queues=N][,queue_size=S][,id=I]`
/// (`pci_segment` accepted: there is no PCI).
pub fn parse_fs(s: &str) -> Result<FsConfig, ConfigError> {
    let keys = ["tag", "socket", "num_queues", "queue_size", "id", "pci_segment"];
    let err = ConfigError::Fs;
    let mut f = FsConfig::new("", "");
    for (k, v) in pairs(s, &keys).map_err(err)? {
        let number = |v: &str| v.parse::<u16>().map_err(|_| err(format!("{k}={v:?} is not a number")));
        match k {
            "tag" => f.tag = v.to_string(),
            "socket" => f.socket = PathBuf::from(v),
            "num_queues" => f.num_queues = number(v)?,
            "queue_size" => f.queue_size = number(v)?,
            "id" => f.id = Some(v.to_string()),
            _ => {}
        }
    }
    if f.socket.as_os_str().is_empty() {
        return Err(err("socket= is required".into()));
    }
    f.check().map_err(err)?;
    Ok(f)
}

/// Cloud Hypervisor's `--vsock cid=N,socket=PATH` (`id` and `pci_segment` accepted).
pub fn parse_vsock(s: &str) -> Result<VsockConfig, ConfigError> {
    let (mut cid, mut socket) = (None, None);
    for (k, v) in pairs(s, &["cid", "socket", "id", "pci_segment"]).map_err(ConfigError::Vsock)? {
        match k {
            "cid" => cid = Some(v.parse().map_err(|_| ConfigError::Vsock(format!("cid={v:?} is not a number")))?),
            "socket" => socket = Some(PathBuf::from(v)),
            _ => {}
        }
    }
    match (cid, socket) {
        (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
        _ => Err(ConfigError::Vsock("cid= and socket= are required".into())),
    }
}

/// Cloud Hypervisor's `--rng [src=PATH]`.
pub fn parse_rng(s: &str) -> Result<RngConfig, ConfigError> {
    let mut r = RngConfig { src: PathBuf::from(DEFAULT_RNG_SRC) };
    if !s.is_empty() {
        for (_, v) in pairs(s, &["src"]).map_err(ConfigError::Rng)? {
            r.src = PathBuf::from(v);
        }
    }
    Ok(r)
}

/// `boot=N[,max=M][,eject_timeout_ms=T]` (or just `N`); max defaults to boot.
pub fn parse_cpus(s: &str) -> Result<CpusConfig, ConfigError> {
    fn num<N: std::str::FromStr>(k: &str, v: &str) -> Result<N, ConfigError> {
        v.parse().map_err(|_| ConfigError::Cpus(format!("{k}={v:?} is not a number")))
    }
    if let Ok(n) = s.parse::<u32>() {
        return Ok(CpusConfig::new(n, n));
    }
    let mut boot = None;
    let mut max = None;
    let mut timeout = DEFAULT_EJECT_TIMEOUT_MS;
    let mut topology = None;
    for (k, v) in pairs(s, &["boot", "max", "eject_timeout_ms", "topology"]).map_err(ConfigError::Cpus)? {
        match k {
            "boot" => boot = Some(num(k, v)?),
            "max" => max = Some(num(k, v)?),
            "topology" => {
                let parts: Vec<u16> = v.split(':').map(|p| num(k, p)).collect::<Result<_, _>>()?;
                let [threads_per_core, cores_per_die, dies_per_package, packages] = parts[..] else {
                    return Err(ConfigError::Cpus(format!("topology={v:?}: expected threads:cores:dies:packages")));
                };
                topology = Some(CpuTopology { threads_per_core, cores_per_die, dies_per_package, packages });
            }
            _ => timeout = num(k, v)?,
        }
    }
    let boot = boot.ok_or_else(|| ConfigError::Cpus("boot= is required".into()))?;
    Ok(CpusConfig {
        boot_vcpus: boot,
        max_vcpus: max.unwrap_or(boot),
        eject_timeout_ms: timeout,
        topology,
        nested: true,
    })
}

/// A size like `128M`, `1G`, `4096K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (e.g. 128M, 1G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// `size=128M` (or just `128M`).
/// `size=S[,thp=on|off]` (Cloud Hypervisor's keys), or just `S`.
pub fn parse_memory(s: &str) -> Result<MemoryConfig, ConfigError> {
    if !s.contains('=') {
        return parse_size(s).map(MemoryConfig::new).map_err(ConfigError::Memory);
    }
    let mut size = None;
    let (mut thp, mut shared, mut hotplug_size) = (true, false, None);
    for (k, v) in pairs(s, &["size", "thp", "shared", "hotplug_size"]).map_err(ConfigError::Memory)? {
        match k {
            "size" => size = Some(parse_size(v).map_err(ConfigError::Memory)?),
            "thp" => thp = on_off(k, v).map_err(ConfigError::Memory)?,
            "hotplug_size" => hotplug_size = Some(parse_size(v).map_err(ConfigError::Memory)?).filter(|&h| h > 0),
            _ => shared = on_off(k, v).map_err(ConfigError::Memory)?,
        }
    }
    let size = size.ok_or_else(|| ConfigError::Memory("size= is missing".into()))?;
    Ok(MemoryConfig { thp, shared, hotplug_size, ..MemoryConfig::new(size) })
}

/// `tty`, `off`, or `file=PATH`.
pub fn parse_serial(s: &str) -> Result<SerialConfig, ConfigError> {
    match s {
        "tty" => Ok(SerialConfig::Tty),
        "off" => Ok(SerialConfig::Off),
        _ => match s.strip_prefix("file=") {
            Some(p) if !p.is_empty() => Ok(SerialConfig::File { file: PathBuf::from(p) }),
            _ => Err(ConfigError::Serial(format!("expected tty, off or file=PATH, got {s:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's KVM.
    const HOST: KvmLimits = KvmLimits::new(1024, 4096);

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=2,max=4"), Ok(CpusConfig::new(2, 4)));
        assert_eq!(parse_cpus("max=4,boot=1"), Ok(CpusConfig::new(1, 4)));
        assert_eq!(parse_cpus("boot=3"), Ok(CpusConfig::new(3, 3)));
        assert_eq!(parse_cpus("2"), Ok(CpusConfig::new(2, 2)));
        for bad in ["", "boot=", "boot=x", "max=4", "boot=1,boot=2", "boot=1,min=2", "boot=-1", "boot"] {
            assert!(matches!(parse_cpus(bad), Err(ConfigError::Cpus(_))), "{bad:?}");
        }
        let v = |b, m| validate_cpus(&CpusConfig::new(b, m), HOST);
        assert!(v(1, 254).is_ok());
        assert!(v(1, 1024).is_ok(), "x2APIC ids");
        assert_eq!(v(0, 4), Err(ConfigError::Cpus("boot must be at least 1".into())));
        assert_eq!(v(5, 4), Err(ConfigError::Cpus("boot=5 is larger than max=4".into())));
        assert_eq!(v(1, 1025), Err(ConfigError::Cpus("max=1025 exceeds the supported limit of 1024".into())));
        let big = KvmLimits::new(8192, 8192);
        assert!(validate_cpus(&CpusConfig::new(1, MAX_SUPPORTED_VCPUS), big).is_ok());
        let e = validate_cpus(&CpusConfig::new(1, MAX_SUPPORTED_VCPUS + 1), big).unwrap_err();
        assert!(e.to_string().contains("supported limit of 2048"), "{e}");
        assert!(validate_cpus(&CpusConfig::new(1, 20), KvmLimits::new(16, 16)).is_err());
        let e = validate_cpus(&CpusConfig::new(1, 300), KvmLimits::new(1024, 256)).unwrap_err();
        assert!(
            e.to_string().contains("max=300 needs APIC ids up to 299, but this host's KVM takes vCPU ids below 256"),
            "{e}"
        );
        let t = parse_cpus("boot=1,max=2,eject_timeout_ms=3000").unwrap();
        assert_eq!(t.eject_timeout_ms, 3000);
        assert!(validate_cpus(&CpusConfig { eject_timeout_ms: 0, ..t }, HOST).is_err());
        assert!(validate_cpus(&CpusConfig { eject_timeout_ms: u64::MAX, ..t }, HOST).is_err());
        assert!(parse_cpus("boot=1,eject_timeout_ms=soon").is_err());
        // Cloud Hypervisor's topology=threads:cores:dies:packages, which must make max.
        let t = parse_cpus("boot=2,max=8,topology=2:2:1:2").unwrap();
        assert_eq!(t.topology.map(topology_text).as_deref(), Some("2:2:1:2"));
        assert!(validate_cpus(&t, HOST).is_ok());
        let e = validate_cpus(&parse_cpus("boot=1,max=6,topology=2:2:1:2").unwrap(), HOST).unwrap_err();
        assert!(e.to_string().contains("makes 8 vCPUs, but max=6"), "{e}");
        assert!(validate_cpus(&parse_cpus("boot=1,max=1,topology=1:1:1:0").unwrap(), HOST).is_err());
        // 5 cores take 3 bits: 50 packages of them need APIC id 49 << 3 | 4,
        // which x2APIC takes, and a KVM with ids below 256 does not.
        let sparse = parse_cpus("boot=1,max=250,topology=1:5:1:50").unwrap();
        assert!(validate_cpus(&sparse, HOST).is_ok());
        let e = validate_cpus(&sparse, KvmLimits::new(1024, 256)).unwrap_err();
        assert!(e.to_string().contains("topology 1:5:1:50 needs APIC ids up to 396"), "{e}");
        assert!(validate_cpus(&parse_cpus("boot=1,max=192,topology=1:3:1:64").unwrap(), HOST).is_ok());
        for bad in ["boot=1,topology=1:1:1", "boot=1,topology=a:1:1:1", "boot=1,topology=1:1:1:1:1"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
        assert_eq!(ConfigError::Cpus("x".into()).to_string(), "x", "no flag or field in the message");
        assert_eq!((ConfigError::Cpus("x".into()).flag(), ConfigError::Cpus("x".into()).field()), ("--cpus", "cpus"));
    }

    #[test]
    fn sizes_and_memory() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096k"), Ok(4096 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "12X", "1.5G", "-1M", "99999999999999999999G", "18446744073709551615G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_memory("size=256M"), Ok(MemoryConfig::new(256 << 20)));
        assert_eq!(parse_memory("64M"), Ok(MemoryConfig::new(64 << 20)));
        assert!(parse_memory("size=1M,size=2M").is_err());
        assert!(parse_memory("sz=1M").is_err());
        assert_eq!(parse_memory("size=64M,thp=off"), Ok(MemoryConfig { thp: false, ..MemoryConfig::new(64 << 20) }));
        assert_eq!(parse_memory("thp=on,size=64M"), Ok(MemoryConfig::new(64 << 20)));
        assert!(parse_memory("size=64M,thp=maybe").is_err());
        assert!(parse_memory("thp=off").is_err());
        assert!(validate_memory(16 << 20).is_err());
        assert!(validate_memory(4 << 40).is_err());
        assert!(validate_memory((128 << 20) + 1).is_err());
        assert!(validate_memory(128 << 20).is_ok());
    }

    #[test]
    fn net_flags_parse_as_cloud_hypervisor_spells_them() {
        let n = parse_net(
            "tap=tap0,mac=02:00:00:00:00:01,id=net0,num_queues=2,queue_size=256,offload_ufo=on,pci_segment=0",
        )
        .unwrap();
        assert_eq!(
            (n.tap.as_deref(), n.mac.as_str(), n.id.as_deref()),
            (Some("tap0"), "02:00:00:00:00:01", Some("net0"))
        );
        assert!(n.offload_csum && n.offload_tso);
        let n = parse_net("fd=3,offload_tso=off").unwrap();
        assert_eq!((n.fd, n.tap, n.offload_tso), (Some(3), None, false));
        assert!(parse_mac(&n.mac).is_ok_and(|m| m[0] & 3 == 2), "a random local unicast MAC: {}", n.mac);
        for bad in [
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=0:1",
            "tap=t,num_queues=4",
            "tap=t,ip=10.0.0.1",
            "tap=t,queue_size=100",
            "tap=t,frob=1",
        ] {
            assert!(matches!(parse_net(bad), Err(ConfigError::Net(_))), "{bad:?}");
        }
        assert_eq!(ConfigError::Net(String::new()).flag(), "--net");
    }

    #[test]
    fn device_flags_parse_as_cloud_hypervisor_spells_them() {
        let d = parse_disk(
            "path=/d.raw,readonly=on,direct=true,id=root,serial=s0,num_queues=1,image_type=raw,pci_segment=0",
        )
        .unwrap();
        let want = DiskConfig {
            readonly: true,
            direct: true,
            id: Some("root".into()),
            serial: Some("s0".into()),
            ..DiskConfig::new("/d.raw")
        };
        assert_eq!(d, want);
        for bad in [
            "readonly=on",
            "path=/d,readonly=maybe",
            "path=/d,num_queues=2",
            "path=/d,image_type=qcow2",
            "path=/d,frob=1",
        ] {
            assert!(matches!(parse_disk(bad), Err(ConfigError::Disk(_))), "{bad:?}");
        }
        assert_eq!(parse_rng("").unwrap().src, PathBuf::from(DEFAULT_RNG_SRC));
        assert_eq!(parse_rng("src=/dev/random").unwrap().src, PathBuf::from("/dev/random"));
        let v = parse_vsock("cid=3,socket=/run/v.sock").unwrap();
        assert_eq!(v, VsockConfig { cid: 3, socket: "/run/v.sock".into() });
        assert!(parse_vsock("cid=3").is_err() && parse_vsock("cid=x,socket=/s").is_err());
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("tty"), Ok(SerialConfig::Tty));
        assert_eq!(parse_serial("off"), Ok(SerialConfig::Off));
        assert_eq!(parse_serial("file=/tmp/x"), Ok(SerialConfig::File { file: "/tmp/x".into() }));
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn json_shape_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"x").unwrap();
        let json = format!(
            r#"{{"payload":{{"kernel":"{}"}},"cpus":{{"boot_vcpus":1,"max_vcpus":2}},"memory":{{"size":134217728}},"serial":{{"mode":"Off"}}}}"#,
            kernel.display()
        );
        let c: VmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(c.payload.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.serial, SerialConfig::Off);
        c.validate(HOST).unwrap();
        let mut missing = c.clone();
        missing.payload.kernel = dir.path().join("nope");
        assert!(matches!(missing.validate(HOST), Err(ConfigError::Kernel { .. })));
        let mut dir_initrd = c.clone();
        dir_initrd.payload.initramfs = Some(dir.path().to_path_buf());
        assert!(matches!(dir_initrd.validate(HOST), Err(ConfigError::Initramfs { .. })));
        let mut long = c.clone();
        long.payload.cmdline = "x".repeat(5000);
        assert!(matches!(long.validate(HOST), Err(ConfigError::Cmdline(_))));
        // Devices: a disk that is not there, a vsock CID that is reserved or a
        // socket in no directory, an rng source that cannot be read.
        let mut disk = c.clone();
        disk.devices.disks.push(DiskConfig::new(dir.path().join("no-disk.raw")));
        let e = disk.validate(HOST).unwrap_err();
        assert!(matches!(&e, ConfigError::Disk(m) if m.contains("no-disk.raw")), "{e}");
        assert_eq!((e.flag(), e.field()), ("--disk", "disks"));
        let mut vsock = c.clone();
        vsock.devices.vsock = Some(VsockConfig { cid: 2, socket: dir.path().join("v.sock") });
        assert!(matches!(vsock.validate(HOST), Err(ConfigError::Vsock(_))), "CID 2 is the host's");
        vsock.devices.vsock = Some(VsockConfig { cid: 3, socket: dir.path().join("no-dir/v.sock") });
        assert!(matches!(vsock.validate(HOST), Err(ConfigError::Vsock(_))));
        vsock.devices.vsock = Some(VsockConfig { cid: 3, socket: dir.path().join("v.sock") });
        vsock.validate(HOST).unwrap();
        // A net device: exactly one of tap= and fd=, the fd open.
        let mut net = c.clone();
        net.devices.net = vec![NetConfig { tap: None, ..NetConfig::on_tap("t") }];
        assert!(matches!(net.validate(HOST), Err(ConfigError::Net(_))));
        net.devices.net = vec![NetConfig { fd: Some(987), tap: None, ..NetConfig::on_tap("t") }];
        assert!(matches!(net.validate(HOST), Err(ConfigError::Net(_))), "fd 987 is not open");
        net.devices.net = vec![NetConfig::on_tap("t")];
        net.validate(HOST).unwrap();
        let mut rng = c.clone();
        rng.devices.rng = Some(RngConfig { src: dir.path().join("no-rng") });
        assert!(matches!(rng.validate(HOST), Err(ConfigError::Rng(_))));
        assert!(serde_json::from_str::<VmConfig>(r#"{"cpus":{"boot_vcpus":1,"max_vcpus":1}}"#).is_err());
        let unknown = json.replace(r#""memory""#, r#""bogus":1,"memory""#);
        assert!(serde_json::from_str::<VmConfig>(&unknown).is_err());
    }
}
