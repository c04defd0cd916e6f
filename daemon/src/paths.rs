//! Every filesystem path the daemon touches, in one place.

use std::path::{Path, PathBuf};

use ebpf_common::ABI_VERSION;

/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Default base for Palisade's pins; the ABI directory goes beneath it.
pub const DEFAULT_PIN_BASE: &str = "/sys/fs/bpf/palisade";
/// securityfs, which lists the active LSMs.
pub const SECURITYFS: &str = "/sys/kernel/security";
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";
/// The kernel's own BTF; LSM attach points are resolved against it.
pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The ABI-versioned pin directory, `<base>/v<ABI>/`, and the names inside it.
///
/// A daemon of another ABI version looks in another directory, so it never
/// adopts a map whose layout it does not know.
#[derive(Clone, Debug)]
pub struct PinDir {
    base: PathBuf,
    root: PathBuf,
    abi: u32,
}

impl PinDir {
    pub fn new(base: impl AsRef<Path>) -> Self {
        Self::with_abi(base, ABI_VERSION)
    }

    /// The directory of another ABI version: where an older daemon pinned.
    pub fn with_abi(base: impl AsRef<Path>, abi: u32) -> Self {
        let base = base.as_ref().to_path_buf();
        let root = base.join(format!("v{abi}"));
        Self { base, root, abi }
    }

    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// The pin directories other ABI versions left under the same base.
    pub fn other_abis(&self) -> Vec<PinDir> {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut others: Vec<PinDir> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_prefix('v')?.parse().ok())
            .filter(|&abi| abi != self.abi)
            .map(|abi| Self::with_abi(&self.base, abi))
            .collect();
        others.sort_by_key(|p| p.abi);
        others
    }

    /// The directory shared by all ABI versions (`/sys/fs/bpf/palisade`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.links().join(name)
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new(DEFAULT_PIN_BASE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_abis_lists_sibling_version_directories_only() {
        let base = std::env::temp_dir().join(format!("pindir-{}", std::process::id()));
        for d in ["v0", "v7", "v1", "vx", "links"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let pins = PinDir::with_abi(&base, 1);
        let others: Vec<u32> = pins.other_abis().iter().map(PinDir::abi).collect();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(others, [0, 7]);
    }

    #[test]
    fn pins_live_under_the_abi_directory() {
        let pins = PinDir::new("/sys/fs/bpf/palisade");
        assert_eq!(
            pins.map("PAL_TC_STATS"),
            Path::new(&format!(
                "/sys/fs/bpf/palisade/v{ABI_VERSION}/maps/PAL_TC_STATS"
            ))
        );
        assert_eq!(
            pins.link("xdp-7"),
            Path::new(&format!("/sys/fs/bpf/palisade/v{ABI_VERSION}/links/xdp-7"))
        );
    }
}
