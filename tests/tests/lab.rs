//! The lab runner itself: exit statuses (0 matched, 1 mismatch, 2 invalid,
//! 3 skipped), errors naming the file line, `--json`, and that a run leaves
//! no pins or cgroups behind, also when interrupted.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use palisade_tests::palisade_bin;

fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Runs the lab; returns its output and what it left behind.
fn lab(args: &[&str], files: &[PathBuf]) -> anyhow::Result<(Output, Vec<String>)> {
    let child = Command::new(palisade_bin()?)
        .args(["lab", "run"])
        .args(args)
        .args(files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    Ok((out, leftovers(pid)))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What the lab run of process `pid` left behind: its pins and cgroups.
fn leftovers(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for base in ["/sys/fs/bpf", "/sys/fs/cgroup"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            found.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("palisade-lab{pid}-")))
                    .map(|n| format!("{base}/{n}")),
            );
        }
    }
    found
}

fn kernel_has_sctp() -> bool {
    // SAFETY: plain socket(2); the descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 132) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
    fd >= 0
}

#[test]
fn invalid_files_exit_2_naming_the_line_and_touch_nothing() -> anyhow::Result<()> {
    let dir = scenarios().join("invalid");
    for (file, wanted) in [
        ("unknown-key.yaml", ":6: probes[0]: unknown field `prot`"),
        (
            "unknown-kind.yaml",
            ":5: x/typo: policies[0]: unknown kind NetworkPolicee",
        ),
        ("unknown-pod.yaml", ":5: probes[0]: q/q is not a pod"),
    ] {
        let (out, _) = lab(&[], &[dir.join(file)])?;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {t}");
        assert!(t.contains(wanted), "{file}: {t}");
    }
    Ok(())
}

#[test]
fn a_mismatch_exits_1_marks_the_cell_and_reports_it_in_json() -> anyhow::Result<()> {
    let file = scenarios().join("selftest").join("mismatch.yaml");
    let (out, left) = lab(&[], std::slice::from_ref(&file))?;
    let t = text(&out);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("! y/a -> x/a: expected X, observed ."), "{t}");
    assert!(t.contains("FAIL selftest-mismatch"), "{t}");

    let (out, _) = lab(&["--json"], &[file])?;
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cells = v["scenarios"][0]["probes"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cell = |to: &str| cells.iter().find(|c| c["from"] == "y/a" && c["to"] == to);
    assert_eq!(
        cell("x/a").map(|c| c["observed"].clone()),
        Some("reachable".into())
    );
    assert_eq!(cell("x/a").map(|c| c["expected"].clone()), Some("X".into()));
    assert_eq!(
        cell("x/b").map(|c| c["observed"].clone()),
        Some("reachable".into())
    );
    assert_eq!(v["exit"], 1);
    Ok(())
}

#[test]
fn sctp_cells_are_skipped_not_passed_where_the_kernel_lacks_sctp() -> anyhow::Result<()> {
    let (out, _) = lab(&[], &[scenarios().join("sctp").join("sctp.yaml")])?;
    let t = text(&out);
    if kernel_has_sctp() {
        assert_eq!(out.status.code(), Some(0), "{t}");
    } else {
        assert_eq!(out.status.code(), Some(3), "{t}");
        assert!(t.contains("cells skipped: kernel has no SCTP"), "{t}");
        // The TCP table of the same file still ran and matched.
        assert!(t.contains("SKIP sctp"), "{t}");
    }
    Ok(())
}

#[test]
fn an_interrupted_run_cleans_up() -> anyhow::Result<()> {
    let child = Command::new(palisade_bin()?)
        .args(["lab", "run"])
        .arg(scenarios().join("deny-all-ingress.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Interrupt once the run has built its node (its cgroup exists).
    let deadline = Instant::now() + Duration::from_secs(20);
    let child_pid = child.id();
    let prefix = format!("palisade-lab{child_pid}-");
    let started = || {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(false)
    };
    while !started() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started(), "the lab never built its node");
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child_pid as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("interrupted"), "{t}");
    let left = leftovers(child_pid);
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
