//! Builds the three eBPF objects with aya-build and leaves them in OUT_DIR,
//! where `loader::objects` embeds them. `cargo build` is all a developer types.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

/// Reads `KEY=value` from scripts/versions.env, the single place the pinned
/// versions are written down.
fn pinned(versions: &str, key: &str) -> anyhow::Result<String> {
    versions
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| anyhow!("{key} missing from scripts/versions.env"))
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("..");
    let versions_path = root.join("scripts/versions.env");
    println!("cargo::rerun-if-changed={}", versions_path.display());
    // aya-build watches each eBPF crate; the shared ABI crate needs its own line.
    println!(
        "cargo::rerun-if-changed={}",
        root.join("ebpf-common").display()
    );
    let versions = fs::read_to_string(&versions_path)
        .with_context(|| format!("reading {}", versions_path.display()))?;
    let toolchain = pinned(&versions, "EBPF_TOOLCHAIN")?;
    let linker = pinned(&versions, "BPF_LINKER_VERSION")?;

    // scripts/setup.sh builds bpf-linker into a cache keyed by (linker,
    // toolchain); putting it on PATH here lets a bare `cargo build` work.
    let cache = env::var_os("PALISADE_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/palisade")));
    if let Some(cache) = cache {
        let bin = cache.join(format!("bpf-linker-{linker}-{toolchain}/bin"));
        if bin.is_dir() {
            let path = env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin];
            dirs.extend(env::split_paths(&path));
            let joined = env::join_paths(dirs)?;
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { env::set_var("PATH", joined) };
        }
    }
    println!("cargo::rerun-if-env-changed=PALISADE_CACHE");

    let packages = [
        ("ebpf-xdp", "../ebpf-xdp"),
        ("ebpf-tc", "../ebpf-tc"),
        ("ebpf-lsm", "../ebpf-lsm"),
    ]
    .map(|(name, root_dir)| aya_build::Package {
        name,
        root_dir,
        ..Default::default()
    });
    aya_build::build_ebpf(packages, aya_build::Toolchain::Custom(&toolchain))
}
