//! What a test needs that the test cannot make itself (Cloud Hypervisor's
//! binaries, a kernel feature), and what happens when it is missing:
//!
//! * under CI (`CI` set to anything but `false` or `0`), or with
//!   `LITHE_REQUIRE_ALL=1`, the test fails, naming what is missing: a green
//!   run means every test ran;
//! * elsewhere the test returns early and the skip is recorded in
//!   `target/test-skips/`, one file per skip, which `scripts/test.sh`
//!   counts and lists after the tests, so a skip is never silent.

use std::path::{Path, PathBuf};

/// The repository's root (this crate lives in `tests/prereq`).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().and_then(Path::parent).unwrap_or(here).to_path_buf()
}

/// Where Cloud Hypervisor's binaries are: `$LITHE_PEERS`, else
/// `shared/peers` beside the repository (where every checkout CI makes has it).
pub fn peers_dir() -> PathBuf {
    match std::env::var_os("LITHE_PEERS") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared/peers"),
    }
}

/// Whether a missing prerequisite fails the test instead of skipping it.
pub fn required() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    set("CI") || set("LITHE_REQUIRE_ALL")
}

/// Where skips are recorded.
pub fn skips_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("test-skips"),
        None => repo_root().join("target/test-skips"),
    }
}

/// `test` cannot run because `what` is missing: fails it where prerequisites
/// are required, else records and prints the skip. The caller returns.
pub fn missing(test: &str, what: &str) {
    if required() {
        panic!("{test}: {what}; a prerequisite is missing, and under CI that is a failure, not a skip");
    }
    let dir = skips_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{}.txt", test.replace(['/', ':'], "_"))), format!("{test}: {what}\n"));
    eprintln!("!!! SKIPPED {test}: {what} !!!");
}

/// The peer binary `name` (e.g. `ch-remote`), or `None` after [`missing`].
pub fn peer(test: &str, name: &str) -> Option<PathBuf> {
    let p = peers_dir().join(name);
    if p.is_file() {
        return Some(p);
    }
    missing(test, &format!("{} is missing (set LITHE_PEERS to the folder that has it)", p.display()));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("tests/prereq").is_dir());
    }
}
