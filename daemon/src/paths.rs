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
}

impl PinDir {
    pub fn new(base: impl AsRef<Path>) -> Self {
        let base = base.as_ref().to_path_buf();
        let root = base.join(format!("v{ABI_VERSION}"));
        Self { base, root }
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
