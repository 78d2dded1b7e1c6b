//! The network section: per VMM, per run, one VM on a TAP in a network
//! namespace the bench makes and removes, its guest serving TCP echo on
//! port 7 (`lithe_net=` on the command line runs init's net-up at boot).
//! The bench streams through the echo from inside the namespace, one
//! connection and then four at once, every byte checked, and reads the
//! VMM's CPU (every thread but the vCPUs', /proc schedstat) around it.
//!
//! Cloud Hypervisor sets the TAP's address itself (its `ip=`/`mask=`);
//! lithe leaves that to the host, so the bench gives it with ip(8).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tests::netns::Netns;

use crate::vm::{scratch, vmm_cpu_ns, Setup, Vm, Vmm};
use crate::Samples;

const BOOT_LIMIT: Duration = Duration::from_secs(400);
const HOST: &str = "10.80.0.1";
const GUEST: &str = "10.80.0.2";
/// Bytes each connection sends (and gets back).
const PER_STREAM: usize = 4 << 20;
/// The net figures are keyed with this `max`.
pub const NET_KEY: u32 = 1;

pub const FIGURES: [&str; 4] = [
    "TCP echo, 1 stream (MB/s each way)",
    "TCP echo, 4 streams (MB/s each way, all together)",
    "VMM CPU per MB each way, 1 stream (ms)",
    "VMM CPU per MB each way, 4 streams (ms)",
];

/// Streams `PER_STREAM` bytes through each of `conns` at once; the seconds.
fn stream(conns: Vec<std::net::TcpStream>) -> Result<f64, String> {
    let t = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || -> Result<(), String> {
                s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
                let mut w = s.try_clone().map_err(|e| e.to_string())?;
                let writer = std::thread::spawn(move || -> Result<(), String> {
                    let chunk: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
                    let mut left = PER_STREAM;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        w.write_all(&chunk[..n]).map_err(|e| format!("send: {e}"))?;
                        left -= n;
                    }
                    Ok(())
                });
                let (mut r, mut got, mut buf) = (s, 0usize, vec![0u8; 64 << 10]);
                while got < PER_STREAM {
                    let n = r.read(&mut buf).map_err(|e| format!("echo: {e}"))?;
                    if n == 0 {
                        return Err(format!("the guest closed after {got} bytes"));
                    }
                    for (i, b) in buf[..n].iter().enumerate() {
                        if *b != (((got + i) % (64 << 10)) % 251) as u8 {
                            return Err(format!("byte {} of the echo differs", got + i));
                        }
                    }
                    got += n;
                }
                writer.join().map_err(|_| "the writer panicked")?
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a stream panicked")??;
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(setup: &Setup, vmm: Vmm, out: &mut Samples) -> Result<(), String> {
    let ns = Netns::new("benchnet").ok_or("no network namespace (needs ip(8) and root)")?;
    let dir = scratch(&format!("{}-net", vmm.name()))?;
    let base = setup.device_cmdline(vmm)?;
    let extra: Vec<String> = match vmm {
        Vmm::Lithe => vec!["--net".into(), "tap=bnet0,mac=02:4c:00:00:00:80".into()],
        Vmm::CloudHypervisor => {
            vec!["--net".into(), format!("tap=bnet0,mac=02:4c:00:00:00:80,ip={HOST},mask=255.255.255.0")]
        }
        // QEMU's own virtio-net on a TAP it opens by name (userspace
        // virtio-net: no vhost-net on this host, and none for the others).
        Vmm::Qemu => vec![
            "-netdev".into(),
            "tap,id=n0,ifname=bnet0,script=no,downscript=no".into(),
            "-device".into(),
            "virtio-net-pci,netdev=n0,mac=02:4c:00:00:00:80".into(),
        ],
    };
    let mut vm = Vm::launch_in(setup, vmm, &dir, 1, &format!("{base} lithe_net={GUEST}/24"), &extra, Some(&ns.0))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&format!("/proc/{}/net/dev", vm.pid)).exists()
        || !std::fs::read_to_string(format!("/proc/{}/net/dev", vm.pid)).is_ok_and(|d| d.contains("bnet0"))
    {
        if Instant::now() > deadline {
            return Err("the VMM did not make its TAP".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if vmm != Vmm::CloudHypervisor {
        ns.ip(&["addr", "add", &format!("{HOST}/24"), "dev", "bnet0"]);
    }
    ns.ip(&["link", "set", "bnet0", "up"]);
    vm.wait_serial(0, "LITHE-GUEST net-up eth0", BOOT_LIMIT)?;
    let addr: std::net::SocketAddr = format!("{GUEST}:7").parse().unwrap();
    let mut put = |what: &'static str, v: f64| out.entry((what, NET_KEY, vmm)).or_default().push(v);
    for (n, rate, cpu) in [(1, FIGURES[0], FIGURES[2]), (4, FIGURES[1], FIGURES[3])] {
        let conns: Vec<_> = (0..n).map(|_| ns.connect(addr, Duration::from_secs(60))).collect();
        let cpu0 = vmm_cpu_ns(vm.pid);
        let secs = stream(conns)?;
        let mb = (n * PER_STREAM) as f64 / 1e6;
        put(rate, mb / secs);
        put(cpu, vmm_cpu_ns(vm.pid).saturating_sub(cpu0) as f64 / 1e6 / mb);
    }
    Ok(())
}
