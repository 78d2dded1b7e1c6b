//! Side-by-side benchmark: lithe and (when `../shared/peers/cloud-hypervisor`
//! is there) Cloud Hypervisor on the same kernel, initramfs and command line,
//! alternating in one run. Run it through `scripts/bench.sh`; it prints
//! Markdown tables (and writes them to `--out FILE`).
//!
//! Six sections (`--sections hotplug,io,net,fs,mem,netscale`, all by default):
//! vCPU hotplug (hotplug.rs), disk and vsock I/O (io.rs), TCP over a TAP
//! (netio.rs), virtio-fs reads through virtiofsd (fsio.rs), memory
//! hotplug (mem.rs), and TCP
//! throughput while lithe's vCPUs change (netscale.rs, lithe alone). A figure a VMM cannot give is "n/a" with
//! the reason in the notes.
//!
//! Not a test: absolute times on this machine swing from day to day, so
//! only the ratios within one run mean anything.

mod fsio;
mod hotplug;
mod io;
mod mem;
mod netio;
mod netscale;
mod qmp;
mod vm;

use std::collections::BTreeMap;
use std::path::Path;

use vm::{Setup, Vmm};

/// One figure's samples, by VMM.
type Samples = BTreeMap<(&'static str, u32, Vmm), Vec<f64>>;

fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Some((mean, lo, hi))
}

fn cell(v: Option<&Vec<f64>>) -> String {
    match v.and_then(|v| stats(v).map(|s| (s, v.len()))) {
        Some(((mean, lo, hi), n)) if n > 1 => format!("{mean:.2} ({lo:.2}–{hi:.2}, n={n})"),
        Some(((mean, _, _), n)) => format!("{mean:.2} (n={n})"),
        None => "n/a".into(),
    }
}

/// Runs `one` for each VMM `runs` times, alternating which goes first so
/// a drift in the machine's speed does not favour one.
/// Returns a note for each run that failed.
fn alternate(vmms: &[Vmm], runs: usize, label: &str, mut one: impl FnMut(Vmm) -> Result<(), String>) -> Vec<String> {
    let mut failed = Vec::new();
    for run in 0..runs {
        let mut order = vmms.to_vec();
        if run % 2 == 1 {
            order.reverse();
        }
        for vmm in order {
            eprintln!("bench: {} {label} run {}/{runs}", vmm.name(), run + 1);
            if let Err(e) = one(vmm) {
                eprintln!("bench: {} {label}: {e}", vmm.name());
                failed.push(format!("{} {label} run {}: {e}", vmm.name(), run + 1));
            }
        }
    }
    failed
}

fn ratio(l: Option<&Vec<f64>>, c: Option<&Vec<f64>>) -> String {
    match (l.and_then(|v| stats(v)), c.and_then(|v| stats(v))) {
        (Some((a, _, _)), Some((b, _, _))) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// Whether a bigger figure is better (rates); else a smaller one is (times,
/// CPU, RSS, counts).
fn higher_is_better(figure: &str) -> bool {
    figure.contains("MB/s") || figure.contains("IOPS")
}

/// A note for each row where lithe's mean is worse than QEMU's: by how
/// much, and whether the spreads overlap. Why is for the docs the notes name.
fn behind_qemu(samples: &Samples, figures: &[&str], key: u32, label: &str) -> Vec<String> {
    let mut notes = Vec::new();
    for f in figures {
        let get = |vmm| samples.get(&(*f, key, vmm)).and_then(|v| stats(v));
        let (Some((l, l_lo, l_hi)), Some((q, q_lo, q_hi))) = (get(Vmm::Lithe), get(Vmm::Qemu)) else { continue };
        let worse = if higher_is_better(f) { l < q } else { l > q };
        if !worse || q == 0.0 {
            continue;
        }
        let overlap = l_lo <= q_hi && q_lo <= l_hi;
        notes.push(format!(
            "{label}: lithe is behind QEMU on \"{f}\" by {:.1} % (lithe {l_lo:.2}–{l_hi:.2}, QEMU {q_lo:.2}–{q_hi:.2}: the spreads {})",
            ((l - q) / q * 100.0).abs(),
            if overlap { "overlap" } else { "do not overlap" }
        ));
    }
    notes
}

/// A section's table: one row per figure; the QEMU columns when it ran.
fn table(samples: &Samples, figures: &[&str], key: u32, qemu: bool) -> String {
    let mut md = String::new();
    if qemu {
        md.push_str(
            "| figure | lithe | Cloud Hypervisor | QEMU | lithe/CH | lithe/QEMU |\n|---|---|---|---|---|---|\n",
        );
    } else {
        md.push_str("| figure | lithe | Cloud Hypervisor | lithe/CH |\n|---|---|---|---|\n");
    }
    for f in figures {
        let get = |vmm| samples.get(&(*f, key, vmm));
        let (l, c, q) = (get(Vmm::Lithe), get(Vmm::CloudHypervisor), get(Vmm::Qemu));
        if qemu {
            md.push_str(&format!(
                "| {f} | {} | {} | {} | {} | {} |\n",
                cell(l),
                cell(c),
                cell(q),
                ratio(l, c),
                ratio(l, q)
            ));
        } else {
            md.push_str(&format!("| {f} | {} | {} | {} |\n", cell(l), cell(c), ratio(l, c)));
        }
    }
    md
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(2);
    let maxes: Vec<u32> =
        arg("--max").unwrap_or_else(|| "4,32,64".into()).split(',').filter_map(|m| m.parse().ok()).collect();
    let sections = arg("--sections").unwrap_or_else(|| "hotplug,io,net,fs,mem,netscale".into());
    let sections: Vec<&str> = sections.split(',').collect();
    if let Some(s) = sections.iter().find(|s| !["hotplug", "io", "net", "fs", "mem", "netscale"].contains(s)) {
        eprintln!("bench: unknown section {s:?} (--sections takes hotplug, io, net, fs, mem, netscale)");
        std::process::exit(2);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let images = root.join("guest-images/out");
    let ch = root.join("../shared/peers/cloud-hypervisor");
    let setup = Setup {
        lithe: root.join("target/release/lithe"),
        ch: ch.exists().then_some(ch),
        qemu: ["/usr/bin/qemu-system-x86_64"].iter().map(std::path::PathBuf::from).find(|p| p.is_file()),
        vsock_backend: Some(root.join("target/bench-tools/bin/vhost-device-vsock")).filter(|p| p.is_file()),
        kernel: images.join("vmlinux"),
        initramfs: images.join("initramfs.cpio"),
        cmdline: std::fs::read_to_string(root.join("guest-images/cmdline")).unwrap_or_default().trim().to_string(),
    };
    let mut vmms = vec![Vmm::Lithe];
    if setup.ch.is_some() {
        vmms.push(Vmm::CloudHypervisor);
    } else {
        eprintln!("bench: ../shared/peers/cloud-hypervisor is missing; lithe only");
    }
    let mut samples = Samples::new();
    let mut notes = Vec::new();
    let mut md = String::new();

    let mut three = vmms.clone();
    if setup.qemu.is_some() {
        three.push(Vmm::Qemu);
    } else {
        notes.push("no qemu-system-x86_64 (Debian: qemu-system-x86): no QEMU column".into());
    }
    // The io and fs sections read the guest's iobench over hybrid vsock;
    // QEMU's is the vhost-device-vsock backend.
    let mut with_vsock = three.clone();
    if setup.qemu.is_some() && setup.vsock_backend.is_none() {
        with_vsock.retain(|v| *v != Vmm::Qemu);
        notes.push("no target/bench-tools/bin/vhost-device-vsock (scripts/deps.sh --bench builds it): QEMU has no hybrid vsock, so it is not in the io and fs tables".into());
    }
    // `--vmms lithe,CH,QEMU`: a subset, for a quick look at one VMM.
    if let Some(only) = arg("--vmms") {
        let keep: Vec<&str> = only.split(',').collect();
        let names = [Vmm::Lithe, Vmm::CloudHypervisor, Vmm::Qemu].map(Vmm::name);
        if let Some(bad) = keep.iter().find(|k| !names.iter().any(|n| k.eq_ignore_ascii_case(n))) {
            eprintln!("bench: unknown VMM {bad:?} in --vmms (it takes lithe, CH, QEMU)");
            std::process::exit(2);
        }
        for list in [&mut three, &mut with_vsock] {
            list.retain(|v| keep.iter().any(|k| k.eq_ignore_ascii_case(v.name())));
        }
    }
    let qemu_column = three.contains(&Vmm::Qemu);

    if sections.contains(&"hotplug") {
        for max in &maxes {
            let mut found = Vec::new();
            let failed = alternate(&three, runs, &format!("max={max}"), |vmm| {
                hotplug::run(&setup, vmm, *max, &mut samples, &mut found)
            });
            notes.extend(found.into_iter().chain(failed));
        }
        md.push_str("| max | figure | lithe | Cloud Hypervisor | QEMU | lithe/CH | lithe/QEMU |\n|---|---|---|---|---|---|---|\n");
        for max in &maxes {
            for f in &hotplug::FIGURES {
                let get = |vmm| samples.get(&(*f, *max, vmm));
                let (l, c, q) = (get(Vmm::Lithe), get(Vmm::CloudHypervisor), get(Vmm::Qemu));
                md.push_str(&format!(
                    "| {max} | {f} | {} | {} | {} | {} | {} |\n",
                    cell(l),
                    cell(c),
                    cell(q),
                    ratio(l, c),
                    ratio(l, q)
                ));
            }
        }
        for max in &maxes {
            notes.extend(behind_qemu(&samples, &hotplug::FIGURES, *max, &format!("hotplug, max {max}")));
        }
        md.push_str("\nMean (min–max, n = runs). n/a: the VMM does not give the figure (neither Cloud Hypervisor nor QEMU has lithe's per-scan and per-step counters; Cloud Hypervisor does not retire ejected vCPU threads), or every run failed (notes).\n\n");
    }

    if sections.contains(&"io") {
        let image = std::env::temp_dir().join(format!("lithe-bench-{}-image.raw", std::process::id()));
        match io::make_image(&image) {
            Ok(()) => {
                notes.extend(alternate(&with_vsock, runs, "io", |vmm| io::run(&setup, vmm, &image, &mut samples)))
            }
            Err(e) => notes.push(format!("io: no disk image: {e}")),
        }
        let _ = std::fs::remove_file(&image);
        md.push_str(&table(&samples, &io::FIGURES, io::IO_KEY, with_vsock.contains(&Vmm::Qemu)));
        notes.extend(behind_qemu(&samples, &io::FIGURES, io::IO_KEY, "io"));
        md.push_str("\nMean (min–max, n = runs). For MB/s and IOPS higher is better; for CPU lower is better. n/a: the VMM does not give the figure (the device-thread share is lithe's own counter), or every run failed (notes).\n\n");
    }

    if sections.contains(&"net") {
        notes.extend(alternate(&three, runs, "net", |vmm| netio::run(&setup, vmm, &mut samples)));
        md.push_str(&table(&samples, &netio::FIGURES, netio::NET_KEY, qemu_column));
        notes.extend(behind_qemu(&samples, &netio::FIGURES, netio::NET_KEY, "net"));
        md.push_str("\nMean (min–max, n = runs). For MB/s higher is better; for CPU lower is better.\n\n");
    }

    if sections.contains(&"fs") {
        let file = std::env::temp_dir().join(format!("lithe-bench-{}-fs.bin", std::process::id()));
        match fsio::make_file(&file) {
            Ok(()) => {
                notes.extend(alternate(&with_vsock, runs, "fs", |vmm| fsio::run(&setup, vmm, &file, &mut samples)))
            }
            Err(e) => notes.push(format!("fs: no file: {e}")),
        }
        let _ = std::fs::remove_file(&file);
        md.push_str(&table(&samples, &fsio::FIGURES, fsio::FS_KEY, with_vsock.contains(&Vmm::Qemu)));
        notes.extend(behind_qemu(&samples, &fsio::FIGURES, fsio::FS_KEY, "fs"));
        md.push_str("\nMean (min–max, n = runs). For MB/s higher is better; for CPU lower is better (virtiofsd's own CPU is not counted for any VMM).\n\n");
    }

    if sections.contains(&"mem") {
        let mut found = Vec::new();
        let failed = alternate(&three, runs, "mem", |vmm| mem::run(&setup, vmm, &mut samples, &mut found));
        notes.extend(found.into_iter().chain(failed));
        md.push_str(&table(&samples, &mem::FIGURES, mem::MEM_KEY, qemu_column));
        notes.extend(behind_qemu(&samples, &mem::FIGURES, mem::MEM_KEY, "mem"));
        md.push_str("\nMean (min–max, n = runs). Lower is better. n/a: the VMM cannot do it (Cloud Hypervisor does not take ACPI hot-plugged memory back: what it answered is in the notes) or does not count it (lithe's share is lithe's own counter).\n\n");
    }

    if sections.contains(&"netscale") {
        match netscale::run(&setup) {
            Ok(r) => md.push_str(&r.markdown),
            Err(e) => notes.push(format!("netscale: {e}")),
        }
        md.push('\n');
    }

    if notes.iter().any(|n| n.contains("lithe is behind QEMU")) {
        notes.push("Where lithe is behind, what the measurements say is in the way: docs/hotplug.md (vCPUs), docs/devices.md (disk, vsock, net, virtio-fs), docs/memory.md (memory)".into());
    }
    if !notes.is_empty() {
        md.push_str("Notes:\n");
        for n in &notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    print!("{md}");
    if let Some(path) = arg("--out") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("bench: writing {path}: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_where_lithe_is_behind_qemu_get_a_note_by_direction() {
        let mut s = Samples::new();
        let mut put = |f: &'static str, vmm, v: Vec<f64>| drop(s.insert((f, 0, vmm), v));
        put("read (MB/s)", Vmm::Lithe, vec![9.6, 9.9]);
        put("read (MB/s)", Vmm::Qemu, vec![10.2, 10.4]);
        put("boot (s)", Vmm::Lithe, vec![1.0, 1.2]);
        put("boot (s)", Vmm::Qemu, vec![1.1, 1.5]);
        put("idle CPU, % of one core", Vmm::Lithe, vec![0.7, 0.9]);
        put("idle CPU, % of one core", Vmm::Qemu, vec![0.6, 0.8]);
        put("lithe's share (ms)", Vmm::Lithe, vec![3.0]);
        let notes =
            behind_qemu(&s, &["read (MB/s)", "boot (s)", "idle CPU, % of one core", "lithe's share (ms)"], 0, "t");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("\"read (MB/s)\" by 5.3 %") && notes[0].contains("do not overlap"), "{}", notes[0]);
        assert!(
            notes[1].contains("idle CPU") && notes[1].contains("by 14.3 %") && notes[1].contains("spreads overlap")
        );
    }
}
