//! Command line: boot a VM from flags, serve the API, or talk to a running
//! lithe (`lithe remote`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use vmm::config::{self, ConfigError, PayloadConfig, VmConfig, DEFAULT_CMDLINE};

#[derive(Debug, Parser)]
#[command(
    name = "lithe",
    version,
    about = "A minimal VMM with live vCPU hotplug",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub vm: VmArgs,
}

#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// vCPUs at boot and at most: boot=N,max=M[,eject_timeout_ms=T] (how long
    /// the guest gets to eject a vCPU before the removal is rolled back).
    #[arg(long, value_name = "boot=N,max=M", default_value = "boot=1")]
    pub cpus: String,
    /// Guest RAM: size=128M, and thp=off to not ask for transparent huge pages.
    #[arg(long, value_name = "size=SIZE[,thp=on|off][,shared=on]", default_value = "size=128M")]
    pub memory: String,
    /// A virtio-blk disk on a raw image (repeatable):
    /// path=PATH[,readonly=on][,direct=on][,id=ID][,serial=SERIAL].
    #[arg(long, value_name = "path=PATH[,readonly=on][,direct=on]")]
    pub disk: Vec<String>,
    /// A virtio-rng device, filled from src (default /dev/urandom).
    #[arg(long, value_name = "src=PATH", num_args = 0..=1, default_missing_value = "")]
    pub rng: Option<String>,
    /// Hybrid vsock: the guest's CID and the host's Unix socket
    /// (a host process writes `CONNECT <port>`; guest connects go to SOCKET_<port>).
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<String>,
    /// A virtio-net device on a TAP (repeatable): tap=NAME or fd=N (an open
    /// TAP lithe inherited), [,mac=MAC][,offload_csum=on|off][,offload_tso=on|off].
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC]")]
    pub net: Vec<String>,
    /// A virtio-fs device (repeatable): tag=T,socket=PATH of a running
    /// vhost-user backend (virtiofsd)[,num_queues=N][,queue_size=S]. Needs
    /// --memory shared=on.
    #[arg(long, value_name = "tag=T,socket=PATH")]
    pub fs: Vec<String>,
    /// Serial console: tty (stdout/stdin), file=PATH, or off.
    #[arg(long, value_name = "tty|file=PATH|off", default_value = "tty")]
    pub serial: String,
    /// Serve the REST API on this Unix socket (PATH or path=PATH).
    #[arg(long, value_name = "PATH", value_parser = parse_api_socket)]
    pub api_socket: Option<PathBuf>,
    /// Seccomp filters on vCPU and API threads: on (true), off (false), or
    /// log (report what would be blocked, block nothing).
    #[arg(long, value_name = "on|off|log", default_value = "on", value_parser = parse_seccomp)]
    pub seccomp: SeccompMode,
    /// The virtio console: lithe has none, so only "off" (Cloud Hypervisor's flag).
    #[arg(long, value_name = "off", value_parser = parse_console)]
    pub console: Option<String>,
    /// Write Cloud Hypervisor's JSON event records, and lithe's per-vCPU
    /// hotplug events, to path=PATH or to an inherited fd=N.
    #[arg(long, value_name = "path=PATH|fd=N")]
    pub event_monitor: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Verbosity as Cloud Hypervisor counts it: -v info, -vv debug, -vvv
    /// trace (overrides --log-level).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Write the log to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// `--seccomp`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    On,
    Off,
    Log,
}

fn parse_seccomp(s: &str) -> Result<SeccompMode, String> {
    match s {
        "on" | "true" => Ok(SeccompMode::On),
        "off" | "false" => Ok(SeccompMode::Off),
        "log" => Ok(SeccompMode::Log),
        _ => Err(format!("expected on, off, true, false or log, got {s:?}")),
    }
}

fn parse_console(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" | "null" => Ok("off".into()),
        _ => Err(format!("{s:?}: lithe has no virtio-console; only off (use --serial for the guest console)")),
    }
}

fn parse_api_socket(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("path=").unwrap_or(s);
    if path.is_empty() || path.starts_with("fd=") {
        return Err(format!("{s:?}: expected PATH or path=PATH (lithe does not take an inherited fd=)"));
    }
    Ok(PathBuf::from(path))
}

impl VmArgs {
    /// The log level: `-v` counts as Cloud Hypervisor's do, else `--log-level`.
    pub fn log_filter(&self) -> log::LevelFilter {
        match self.verbose {
            0 => self.log_level,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Talk to a running lithe over its API socket.
    Remote(RemoteArgs),
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    #[command(subcommand)]
    pub action: RemoteAction,
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// VMM version.
    Ping,
    /// VM state, config and per-vCPU hotplug state.
    Info,
    /// Scale the running VM to N vCPUs, or to exactly the vCPU ids given.
    Resize {
        #[arg(long, value_name = "N", required_unless_present = "vcpu_ids")]
        cpus: Option<u32>,
        /// A targeted resize: the vCPU ids to run, e.g. 0,1,287 (lithe's desired_vcpu_ids).
        #[arg(long, value_name = "IDS", value_delimiter = ',')]
        vcpu_ids: Option<Vec<u32>>,
        /// Wait until the guest has completed the change.
        #[arg(long)]
        wait: bool,
        /// Longest wait, in milliseconds (implies --wait).
        #[arg(long, value_name = "MS")]
        wait_ms: Option<u64>,
    },
    /// Configure a VM from a JSON file (the vm.create body).
    Create {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Boot the configured VM.
    Boot,
    /// Pause all vCPUs.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Reboot the VM (tear down and boot again).
    Reboot,
    /// Shut the VM down; the VMM keeps serving the API.
    Shutdown,
    /// Shut down the VM and end the VMM.
    VmmShutdown,
    /// Shut the VM down (if it runs) and forget its configuration.
    Delete,
    /// Device counters and lithe's own latencies.
    Counters,
    /// Press the ACPI power button.
    PowerButton,
}

impl VmArgs {
    /// The VM config the flags describe, or `None` without `--kernel`.
    pub fn to_config(&self) -> Result<Option<VmConfig>, ConfigError> {
        let Some(kernel) = &self.kernel else {
            if self.initramfs.is_some() || self.cmdline.is_some() {
                return Err(ConfigError::Kernel {
                    path: PathBuf::new(),
                    reason: "--initramfs and --cmdline need --kernel".into(),
                });
            }
            return Ok(None);
        };
        Ok(Some(VmConfig {
            payload: PayloadConfig {
                kernel: kernel.clone(),
                initramfs: self.initramfs.clone(),
                cmdline: self.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            },
            cpus: config::parse_cpus(&self.cpus)?,
            memory: config::parse_memory(&self.memory)?,
            serial: config::parse_serial(&self.serial)?,
            platform: Default::default(),
            devices: config::DevicesConfig {
                disks: self.disk.iter().map(|d| config::parse_disk(d)).collect::<Result<_, _>>()?,
                rng: self.rng.as_deref().map(config::parse_rng).transpose()?,
                vsock: self.vsock.as_deref().map(config::parse_vsock).transpose()?,
                net: self.net.iter().map(|n| config::parse_net(n)).collect::<Result<_, _>>()?,
                fs: self.fs.iter().map(|f| config::parse_fs(f)).collect::<Result<_, _>>()?,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lithe").chain(args.iter().copied()))
    }

    #[test]
    fn vm_flags_become_a_config() {
        let cli =
            parse(&["--kernel", "/k", "--cpus", "boot=2,max=4", "--memory", "size=256M", "--serial", "off"]).unwrap();
        let c = cli.vm.to_config().unwrap().unwrap();
        assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus, c.memory.size), (2, 4, 256 << 20));
        assert_eq!(c.payload.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn api_only_and_bad_flags() {
        let cli = parse(&["--api-socket", "/tmp/s"]).unwrap();
        assert!(cli.vm.to_config().unwrap().is_none());
        assert!(parse(&["--cmdline", "x"]).unwrap().vm.to_config().is_err());
        let bad = parse(&["--kernel", "/k", "--cpus", "boot=x"]).unwrap().vm.to_config().unwrap_err();
        assert_eq!(bad.flag(), "--cpus", "{bad}");
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--log-level", "loud"]).is_err());
    }

    /// What Kata's clh driver passes at launch: `--api-socket P`, `-v`
    /// repeated, `--seccomp false`; and Cloud Hypervisor's other spellings.
    #[test]
    fn cloud_hypervisor_launch_flags() {
        let cli = parse(&["--api-socket", "/run/clh.sock", "-vv", "--seccomp", "false"]).unwrap();
        assert_eq!(cli.vm.api_socket.as_deref(), Some(std::path::Path::new("/run/clh.sock")));
        assert_eq!((cli.vm.seccomp, cli.vm.log_filter()), (SeccompMode::Off, log::LevelFilter::Debug));
        let cli = parse(&["--api-socket", "path=/s", "--seccomp", "log", "--console", "off"]).unwrap();
        assert_eq!((cli.vm.api_socket.unwrap(), cli.vm.seccomp), (PathBuf::from("/s"), SeccompMode::Log));
        assert_eq!(parse(&["--seccomp", "true"]).unwrap().vm.seccomp, SeccompMode::On);
        assert_eq!(parse(&["-v"]).unwrap().vm.log_filter(), log::LevelFilter::Info);
        assert_eq!(parse(&["-vvvv"]).unwrap().vm.log_filter(), log::LevelFilter::Trace);
        assert_eq!(parse(&[]).unwrap().vm.log_filter(), log::LevelFilter::Info);
        let cli = parse(&["--event-monitor", "path=/tmp/e", "--log-file", "/tmp/l"]).unwrap();
        assert_eq!(cli.vm.event_monitor.as_deref(), Some("path=/tmp/e"));
        for bad in
            [&["--seccomp", "maybe"][..], &["--console", "tty"], &["--api-socket", "fd=3"], &["--api-socket", "path="]]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remote_subcommands() {
        let cli = parse(&["remote", "--api-socket", "/s", "resize", "--cpus", "3", "--wait"]).unwrap();
        match cli.command {
            Some(Command::Remote(RemoteArgs {
                action: RemoteAction::Resize { cpus: Some(3), wait: true, .. },
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        assert!(parse(&["remote", "--api-socket", "/s", "resize"]).is_err());
        let cli = parse(&["remote", "--api-socket", "/s", "resize", "--vcpu-ids", "0,1,287"]).unwrap();
        match cli.command {
            Some(Command::Remote(RemoteArgs { action: RemoteAction::Resize { cpus: None, vcpu_ids, .. }, .. })) => {
                assert_eq!(vcpu_ids, Some(vec![0, 1, 287]))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["remote", "--api-socket", "/s", "resize", "--vcpu-ids", "0,x"]).is_err());
    }
}
