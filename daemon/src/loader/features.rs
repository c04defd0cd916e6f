//! Kernel feature probe, run at start and reported by `palisade status`.
//!
//! Nothing here is assumed from the kernel version alone where the kernel can
//! be asked directly; what is missing is reported, never papered over.

use std::{fs, io, path::Path};

use aya::{
    programs::{LsmAttachType, ProgramType},
    sys::is_program_supported,
    util::KernelVersion,
};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use serde::Serialize;

use crate::paths;

#[derive(Clone, Debug, Serialize)]
pub struct Features {
    /// `uname -r`.
    pub kernel: String,
    /// The kernel exposes its BTF (needed for LSM attach points).
    pub btf: bool,
    /// TC programs attach through TCX links (6.6+), otherwise clsact/netlink.
    pub tcx: bool,
    /// bpffs is mounted where pins go.
    pub bpffs: bool,
    pub bpf_lsm: BpfLsm,
}

/// Whether BPF-LSM programs can enforce anything here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BpfLsm {
    /// `bpf` is an active LSM and the kernel accepts LSM programs.
    Active,
    /// BPF LSM cannot enforce; `reason` says why in words an operator can act on.
    Inactive { reason: String },
}

impl BpfLsm {
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active)
    }
}

impl Features {
    pub fn probe() -> Self {
        Self {
            kernel: kernel_release(),
            btf: Path::new(paths::BTF_VMLINUX).exists(),
            tcx: has_tcx(),
            bpffs: is_bpffs(Path::new(paths::BPFFS)),
            bpf_lsm: probe_bpf_lsm(),
        }
    }

    /// One line per feature, for logs and `palisade status`.
    pub fn lines(&self) -> Vec<String> {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let lsm = match &self.bpf_lsm {
            BpfLsm::Active => "active".to_owned(),
            BpfLsm::Inactive { reason } => format!("inactive ({reason})"),
        };
        vec![
            format!("kernel:  {}", self.kernel),
            format!("btf:     {}", yes(self.btf)),
            format!(
                "tcx:     {}",
                if self.tcx {
                    "yes"
                } else {
                    "no (TC falls back to clsact)"
                }
            ),
            format!("bpffs:   {}", yes(self.bpffs)),
            format!("bpf_lsm: {lsm}"),
        ]
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// TCX arrived in 6.6. aya makes the same choice when it attaches, so this
/// reports what attaching will actually do.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|st| st.filesystem_type() == BPF_FS_MAGIC)
}

/// Whether `bpf` appears in the comma-separated active LSM list.
pub fn lsm_list_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|l| l == "bpf")
}

fn read_lsm_list() -> io::Result<String> {
    match fs::read_to_string(paths::LSM_LIST) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // securityfs is often not mounted outside systemd hosts.
            mount_securityfs()?;
            fs::read_to_string(paths::LSM_LIST)
        }
        other => other,
    }
}

fn mount_securityfs() -> io::Result<()> {
    mount(
        Some("securityfs"),
        paths::SECURITYFS,
        Some("securityfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    tracing::info!(
        path = paths::SECURITYFS,
        "mounted securityfs to read the LSM list"
    );
    Ok(())
}

/// An LSM program attaches without error where BPF LSM is not an active LSM
/// and then never runs, so both the boot-time list and the kernel's
/// willingness to load an LSM program are checked.
fn probe_bpf_lsm() -> BpfLsm {
    let list = match read_lsm_list() {
        Ok(list) => list,
        Err(e) => {
            return BpfLsm::Inactive {
                reason: format!("cannot read {}: {e}", paths::LSM_LIST),
            };
        }
    };
    if !lsm_list_has_bpf(&list) {
        return BpfLsm::Inactive {
            reason: format!(
                "bpf is not in the active LSM list ({}); boot with lsm=...,bpf",
                list.trim()
            ),
        };
    }
    match is_program_supported(ProgramType::Lsm(LsmAttachType::Mac)) {
        Ok(true) => BpfLsm::Active,
        Ok(false) => BpfLsm::Inactive {
            reason: "the kernel does not support BPF-LSM programs".to_owned(),
        },
        Err(e) => BpfLsm::Inactive {
            reason: format!(
                "bpf is an active LSM but the kernel refuses LSM programs: {}",
                error_chain(&e)
            ),
        },
    }
}

/// An error and its sources on one line: aya puts the errno in the source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_must_be_a_whole_entry_of_the_lsm_list() {
        assert!(lsm_list_has_bpf("lockdown,capability,landlock,bpf\n"));
        assert!(lsm_list_has_bpf("bpf"));
        assert!(!lsm_list_has_bpf("lockdown,capability,yama,apparmor"));
        assert!(!lsm_list_has_bpf("lockdown,bpfx,xbpf"));
        assert!(!lsm_list_has_bpf(""));
    }
}
