//! A pod's cgroup on this node, from its uid and QoS class, as the kubelet
//! lays it out under either cgroup driver (cgroup v2):
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`
//!   (uid with `_` for `-`; Guaranteed pods sit directly under
//!   `kubepods.slice` as `kubepods-pod<uid>.slice`);
//! - cgroupfs: `kubepods/<qos>/pod<uid>` (Guaranteed: `kubepods/pod<uid>`).
//!
//! The uid comes from the API server, never from an annotation: a pod
//! author must not be able to point its rules at another pod's cgroup.

use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
    /// Whichever of the two has the pod's directory.
    Auto,
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "systemd" => Ok(Self::Systemd),
            "cgroupfs" => Ok(Self::Cgroupfs),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("{s:?}: expected systemd, cgroupfs or auto")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    /// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`).
    pub root: PathBuf,
    pub driver: Driver,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys/fs/cgroup"),
            driver: Driver::Auto,
        }
    }
}

/// `Guaranteed`, `Burstable`, `BestEffort` as the kubelet names their
/// directories; `None` for Guaranteed, which has no directory of its own.
fn qos_dir(qos: &str) -> Result<Option<&'static str>, String> {
    match qos {
        "Guaranteed" => Ok(None),
        "Burstable" => Ok(Some("burstable")),
        "BestEffort" => Ok(Some("besteffort")),
        other => Err(format!("unknown QoS class {other:?}")),
    }
}

/// The pod's directory, relative to the hierarchy's root, under `driver`
/// (Systemd or Cgroupfs).
pub fn relative(driver: Driver, uid: &str, qos: &str) -> Result<PathBuf, String> {
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(format!("pod uid {uid:?} is not a UUID"));
    }
    let qos = qos_dir(qos)?;
    Ok(match (driver, qos) {
        (Driver::Cgroupfs, None) => format!("kubepods/pod{uid}").into(),
        (Driver::Cgroupfs, Some(q)) => format!("kubepods/{q}/pod{uid}").into(),
        (_, None) => format!("kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_")).into(),
        (_, Some(q)) => format!(
            "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice",
            uid.replace('-', "_")
        )
        .into(),
    })
}

impl Layout {
    /// The pod's cgroup directory on this node, if it exists (a pod whose
    /// sandbox is not up yet has none: its rules are reported not in
    /// force until it does), with links resolved: a cgroup is keyed by the
    /// real directory's inode and depth in the hierarchy.
    pub fn locate(&self, uid: &str, qos: &str) -> Result<Option<PathBuf>, String> {
        let drivers: &[Driver] = match self.driver {
            Driver::Auto => &[Driver::Systemd, Driver::Cgroupfs],
            Driver::Systemd => &[Driver::Systemd],
            Driver::Cgroupfs => &[Driver::Cgroupfs],
        };
        for &driver in drivers {
            let path = self.root.join(relative(driver, uid, qos)?);
            if is_dir(&path) {
                return Ok(Some(std::fs::canonicalize(&path).unwrap_or(path)));
            }
        }
        Ok(None)
    }
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f2d1c3e-8a4b-4c5d-9e0f-123456789abc";

    #[test]
    fn both_drivers_and_every_qos_class() {
        let r = |d, q| relative(d, UID, q).unwrap().display().to_string();
        assert_eq!(
            r(Driver::Systemd, "Burstable"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f2d1c3e_8a4b_4c5d_9e0f_123456789abc.slice"
        );
        assert_eq!(
            r(Driver::Systemd, "BestEffort"),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f2d1c3e_8a4b_4c5d_9e0f_123456789abc.slice"
        );
        assert_eq!(
            r(Driver::Systemd, "Guaranteed"),
            "kubepods.slice/kubepods-pod6f2d1c3e_8a4b_4c5d_9e0f_123456789abc.slice"
        );
        assert_eq!(
            r(Driver::Cgroupfs, "Burstable"),
            format!("kubepods/burstable/pod{UID}")
        );
        assert_eq!(
            r(Driver::Cgroupfs, "BestEffort"),
            format!("kubepods/besteffort/pod{UID}")
        );
        assert_eq!(
            r(Driver::Cgroupfs, "Guaranteed"),
            format!("kubepods/pod{UID}")
        );
    }

    #[test]
    fn a_uid_that_could_climb_out_of_the_hierarchy_is_refused() {
        assert!(relative(Driver::Cgroupfs, "../../system.slice", "Burstable").is_err());
        assert!(relative(Driver::Systemd, "", "Burstable").is_err());
        assert!(relative(Driver::Systemd, UID, "Platinum").is_err());
    }

    #[test]
    fn auto_finds_the_directory_under_either_driver() {
        let root = std::env::temp_dir().join(format!("palisade-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let layout = Layout {
            root: root.clone(),
            driver: Driver::Auto,
        };
        assert_eq!(layout.locate(UID, "BestEffort").unwrap(), None);
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let cgroupfs = root.join(relative(Driver::Cgroupfs, UID, "BestEffort").unwrap());
        std::fs::create_dir_all(&cgroupfs).unwrap();
        assert_eq!(layout.locate(UID, "BestEffort").unwrap(), Some(cgroupfs));
        let systemd = root.join(relative(Driver::Systemd, UID, "Guaranteed").unwrap());
        std::fs::create_dir_all(&systemd).unwrap();
        assert_eq!(
            layout.locate(UID, "Guaranteed").unwrap(),
            Some(systemd.clone())
        );
        // A link (as the lab lays cgroups out) resolves to the directory.
        let other = "0c1d2e3f-0000-4000-8000-000000000002";
        let link = root.join(relative(Driver::Systemd, other, "Guaranteed").unwrap());
        std::os::unix::fs::symlink(&systemd, &link).unwrap();
        assert_eq!(layout.locate(other, "Guaranteed").unwrap(), Some(systemd));
        let only_systemd = Layout {
            root: root.clone(),
            driver: Driver::Systemd,
        };
        assert_eq!(only_systemd.locate(UID, "BestEffort").unwrap(), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
