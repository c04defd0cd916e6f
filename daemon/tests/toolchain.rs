//! The pinned toolchains are written in several files that rustup, cargo and
//! scripts/setup.sh each read; they must name the same versions.

use std::{error::Error, fs, path::PathBuf};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn read(path: &str) -> Result<String> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    Ok(fs::read_to_string(&full).map_err(|e| format!("reading {}: {e}", full.display()))?)
}

fn versions_env(key: &str) -> Result<String> {
    read("scripts/versions.env")?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| format!("{key} missing from scripts/versions.env").into())
}

fn channel(toml: &str) -> Result<String> {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| format!("no channel in {toml}").into())
}

#[test]
fn user_space_toolchain_matches_versions_env() -> Result<()> {
    let toml = read("rust-toolchain.toml")?;
    assert_eq!(channel(&toml)?, versions_env("USER_TOOLCHAIN")?);
    assert!(
        toml.contains(&versions_env("GUEST_TARGET")?),
        "the guest target is not in rust-toolchain.toml"
    );
    Ok(())
}

#[test]
fn every_ebpf_crate_pins_the_ebpf_toolchain_with_rust_src() -> Result<()> {
    for krate in ["ebpf-xdp", "ebpf-tc", "ebpf-lsm"] {
        let toml = read(&format!("{krate}/rust-toolchain.toml"))?;
        assert_eq!(channel(&toml)?, versions_env("EBPF_TOOLCHAIN")?, "{krate}");
        assert!(toml.contains("rust-src"), "{krate} lacks rust-src");
    }
    Ok(())
}
