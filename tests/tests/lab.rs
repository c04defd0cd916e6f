//! The lab runner itself: exit statuses (0 matched, 1 mismatch, 2 invalid,
//! 3 skipped), errors naming the file line, `--json`, a refusal that is
//! never taken for a block, and that a run leaves no pins or cgroups behind,
//! also when interrupted.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
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
    let cgroups = palisade::sync::lsm::cgroup2_root()
        .map_or_else(|| "/sys/fs/cgroup".to_owned(), |p| p.display().to_string());
    for base in ["/sys/fs/bpf", cgroups.as_str()] {
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
    use socket2::{Domain, Protocol, Socket, Type};
    Socket::new(
        Domain::IPV4,
        Type::STREAM,
        Some(Protocol::from(libc::IPPROTO_SCTP)),
    )
    .is_ok()
}

#[test]
fn invalid_files_exit_2_naming_the_line_and_touch_nothing() -> anyhow::Result<()> {
    let dir = scenarios().join("invalid");
    for (file, wanted) in [
        ("unknown-key.yaml", ":6:5: probes[0]: unknown field `prot`"),
        (
            "unknown-kind.yaml",
            ":5: x/typo: policies[0]: unknown kind NetworkPolicee",
        ),
        ("unknown-pod.yaml", ":5: probes[0]: q/q is not a pod"),
        (
            "nodes-with-checks.yaml",
            ":9: checks[0]: process and file checks run on a single node",
        ),
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
fn a_refused_probe_is_not_a_block() -> anyhow::Result<()> {
    let file = scenarios().join("selftest").join("unserved-port.yaml");
    let (out, left) = lab(&["--json"], &[file])?;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cells = v["scenarios"][0]["probes"][0]["cells"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cell = |to: &str| {
        cells
            .iter()
            .find(|c| c["from"] == "y/a" && c["to"] == to)
            .cloned()
            .unwrap_or_default()
    };
    // Expected X, refused: the mismatch, for the right reason.
    let x_a = cell("x/a");
    assert_eq!(x_a["expected"], "X", "{x_a}");
    assert_eq!(x_a["observed"], "refused", "{x_a}");
    assert!(
        x_a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("refused")),
        "{x_a}"
    );
    assert!(x_a.get("confirmation").is_none(), "{x_a}");
    // Expected R: a match.
    let x_b = cell("x/b");
    assert_eq!(
        (&x_b["expected"], &x_b["observed"]),
        (&"R".into(), &"refused".into()),
        "{x_b}"
    );

    let (out, _) = lab(
        &[],
        &[scenarios().join("selftest").join("unserved-port.yaml")],
    )?;
    let t = text(&out);
    assert!(t.contains("! y/a -> x/a: expected X, observed R ("), "{t}");
    assert!(!t.contains("! y/a -> x/b"), "{t}");
    Ok(())
}

#[test]
fn blocked_cells_are_confirmed_by_palisade_drop_events() -> anyhow::Result<()> {
    let (out, left) = lab(&["--json"], &[scenarios().join("unserved-ports.yaml")])?;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let probes = v["scenarios"][0]["probes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut blocked = 0;
    for cell in probes
        .iter()
        .flat_map(|p| p["cells"].as_array().cloned().unwrap_or_default())
    {
        if cell["observed"] == "blocked" {
            blocked += 1;
            assert_eq!(cell["confirmation"]["by"], "event", "{cell}");
            // x/a is isolated and port 82 is allowed by nothing.
            assert_eq!(cell["confirmation"]["policy"], "default-deny", "{cell}");
            assert_eq!(
                cell["confirmation"]["reason"], "drop_default_deny",
                "{cell}"
            );
        } else {
            assert!(cell.get("confirmation").is_none(), "{cell}");
        }
    }
    assert_eq!(blocked, 2, "{v}");
    Ok(())
}

/// With `nodes:`, each node's daemon enforces its own pods: a blocked
/// cell's drop event comes from the destination's node for an ingress
/// policy and from the source's node for an egress one, and the counters
/// say the same by node. Placing every pod on one node would fail it.
#[test]
fn drops_come_from_the_node_that_enforces_them() -> anyhow::Result<()> {
    let files =
        ["ingress", "egress", "relabel"].map(|f| scenarios().join(format!("multi-node-{f}.yaml")));
    let (out, left) = lab(&["--json"], &files)?;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // Which node's daemon drops a blocked cell's probe from `from`, in
    // which direction, in each scenario.
    let enforced_at = |scenario: &str, from: &str| match scenario {
        "multi-node-ingress" => ("n1", "ingress"),
        "multi-node-egress" => ("n1", "egress"),
        // x/c (n1) reaches only servers; y/a (n2) admits only clients.
        _ if from == "x/c" => ("n1", "egress"),
        _ => ("n2", "ingress"),
    };
    let scenarios = v["scenarios"].as_array().cloned().unwrap_or_default();
    assert_eq!(scenarios.len(), 3, "{v}");
    for scenario in &scenarios {
        let name = scenario["name"].as_str().unwrap_or_default();
        let mut blocked = 0;
        for cell in scenario["probes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p["cells"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["observed"] == "blocked")
        {
            blocked += 1;
            let at = enforced_at(name, cell["from"].as_str().unwrap_or_default());
            let confirmation = &cell["confirmation"];
            assert_eq!(confirmation["by"], "event", "{cell}");
            assert_eq!(
                (&confirmation["node"], &confirmation["direction"]),
                (&at.0.into(), &at.1.into()),
                "{cell}"
            );
        }
        assert!(blocked > 0, "{scenario}");
        let metrics: Vec<&str> = scenario["metrics"]
            .as_array()
            .map(|m| m.iter().filter_map(|l| l.as_str()).collect())
            .unwrap_or_default();
        assert!(
            metrics.iter().all(|l| l.contains("{node=\"n")),
            "{metrics:?}"
        );
        if name == "multi-node-relabel" {
            for series in [
                r#"{node="n1",direction="egress""#,
                r#"{node="n2",direction="ingress""#,
            ] {
                assert!(metrics.iter().any(|l| l.contains(series)), "{metrics:?}");
            }
        }
    }
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
    // Interrupt once there is something of each kind to clean up: the
    // node's cgroups and the daemon's pins.
    let deadline = Instant::now() + Duration::from_secs(20);
    let child_pid = child.id();
    let started = || {
        let left = leftovers(child_pid);
        left.iter().any(|l| l.starts_with("/sys/fs/bpf/"))
            && left.iter().any(|l| l.starts_with("/sys/fs/cgroup/"))
    };
    while !started() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started(), "the lab never built its node");
    kill(Pid::from_raw(i32::try_from(child_pid)?), Signal::SIGINT)?;
    let out = child.wait_with_output()?;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("interrupted"), "{t}");
    let left = leftovers(child_pid);
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// `palisade explain` on a scenario file answers for process and file
/// operations: the deciding rule (here a pattern over a blocked
/// directory, and a file's own rules), the posture, a pod without rules,
/// and a question it cannot answer.
#[test]
fn explain_names_the_rule_or_posture_that_decides_a_file_operation() -> anyhow::Result<()> {
    let file = scenarios().join("lsm/patterns.yaml");
    let explain = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(palisade_bin()?)
            .arg("explain")
            .arg(&file)
            .args(args)
            .output()?;
        Ok(text(&out))
    };
    let public = explain(&["--pod", "x/a", "--read", "/srv/pal/pt/vault/public.txt"])?;
    assert!(
        public.contains("ALLOWED") && public.contains("the pattern /srv/pal/pt/vault/pub*"),
        "{public}"
    );
    let private = explain(&["--pod", "x/a", "--read", "/srv/pal/pt/vault/private.txt"])?;
    assert!(
        private.contains("BLOCKED (EPERM)") && private.contains("palisade:x/vault"),
        "{private}"
    );
    let job = explain(&["--pod", "x/a", "--exec", "/srv/pal/pt/tmp/a/job.sh"])?;
    assert!(
        job.contains("BLOCKED") && job.contains("kubearmor:x/keys-and-conf"),
        "{job}"
    );
    let other = explain(&["--pod", "x/b", "--exec", "/bin/sh"])?;
    assert!(
        other.contains("no policy gives x/b process rules"),
        "{other}"
    );
    let both = explain(&["--pod", "x/a", "--read", "/a", "--write", "/b"])?;
    assert!(both.contains("cannot be used with"), "{both}");
    Ok(())
}
