//! Builds the three eBPF objects with the pinned nightly and leaves them in
//! OUT_DIR, where `loader::objects` embeds them. `cargo build` is all a
//! developer types.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

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
    // Each eBPF crate is watched below; the shared ABI crate needs its own line.
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

    // The eBPF target of the target's byte order, and the architecture the
    // crates read (`bpf_target_arch`, for the kernel's structures).
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let ebpf_target_dir = shared_target_dir()?.join(&arch);
    for (crate_dir, object) in [
        ("ebpf-xdp", "palisade-xdp"),
        ("ebpf-tc", "palisade-tc"),
        ("ebpf-lsm", "palisade-lsm"),
    ] {
        println!("cargo::rerun-if-changed={}", root.join(crate_dir).display());
        build_object(&toolchain, crate_dir, (target, &arch), &ebpf_target_dir)?;
        let built = ebpf_target_dir.join(target).join("release").join(object);
        let out = PathBuf::from(env::var("OUT_DIR")?).join(object);
        fs::copy(&built, &out)
            .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    }
    Ok(())
}

/// One target directory for the eBPF objects, beside the build's own
/// (`target/ebpf`, then one per architecture): every build of this crate
/// (clippy, test, the guest's musl build, release) has its own OUT_DIR,
/// and building into it rebuilt `core` and all three objects each time, a
/// minute and a half apiece. Shared, the first build does that once and
/// the others find nothing to do. Its own directory, never the outer
/// build's: cargo would wait on its own lock.
fn shared_target_dir() -> anyhow::Result<PathBuf> {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>/out.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Cargo marks the root of a target directory it made with CACHEDIR.TAG;
    // one made by hand has none: then the profile's directory serves.
    let outer = (out.ancestors())
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .or_else(|| out.ancestors().nth(3))
        .ok_or_else(|| anyhow!("no target directory above {}", out.display()))?;
    Ok(outer.join("ebpf"))
}

/// `cargo build` of one eBPF crate with the pinned nightly. One crate per run,
/// so that no crate's features are unified with another's (the LSM object
/// must not get the pod datapath's maps). Quiet unless it fails.
fn build_object(
    toolchain: &str,
    crate_dir: &str,
    (target, arch): (&str, &str),
    target_dir: &Path,
) -> anyhow::Result<()> {
    let mut cargo = Command::new("rustup");
    cargo.args([
        "run",
        toolchain,
        "cargo",
        "build",
        "--package",
        crate_dir,
        "--bins",
    ]);
    cargo.args(["--release", "--target", target, "-Z", "build-std=core"]);
    cargo.arg("--target-dir").arg(target_dir);
    // BTF must be in the object (aya resolves attach points with it).
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ];
    cargo.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The outer build's compiler and wrapper (clippy-driver under `cargo
    // clippy`) are not the nightly's.
    for key in ["RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"] {
        cargo.env_remove(key);
    }
    let output = cargo
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cargo:?}"))?;
    if !output.status.success() {
        // A build script's stderr is shown when it fails.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return Err(anyhow!(
            "building {crate_dir} failed ({}): {cargo:?}",
            output.status
        ));
    }
    Ok(())
}
