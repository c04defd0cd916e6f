//! Hostile input to the real daemon (its own process, the file source, on
//! the bridge lab), each of the limits of `palisade::model::limits` in
//! turn: a 100 MB policy file, 100,000 documents, an alias bomb, deeply
//! nested selectors, invalid UTF-8, 100,000 ports, 100,000 peers. Each is
//! written as the new version of the good policy's file and as a new file
//! beside it, and for each the test checks that the daemon stays up, that
//! its status reports the refusal naming the file and the limit, that the
//! last good state stays in force (b admits a, not c), and that the
//! daemon's memory stays bounded: each input gets a fresh daemon (memory
//! an allocator keeps after one input would hide what the next costs),
//! whose peak RSS (`VmHWM`) is reset before each file is written
//! (`/proc/<pid>/clear_refs`) and read once it is refused, and a table of
//! the figures is printed (on the stderr descriptor itself, which the test
//! harness does not capture: it shows without `--nocapture`).

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use palisade_lab::enforcer::{DaemonArgs, Enforcer};
use palisade_tests::{
    B_FROM_A, BridgeLab, TempPins, commit_and_wait, in_netns, lab_cluster, palisade_bin, unique,
};

const PORT: u16 = 8080;
const WAIT: Duration = Duration::from_millis(700);
/// How long one hostile input may take to be refused: a debug build
/// parses a document of 300,000 nodes in seconds, several times that on
/// a busy machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(180);
/// A safety bound, far above what the limits let an input cost; the
/// figures are what the test reports.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

fn reaches(lab: &BridgeLab, from: usize, to: usize) -> anyhow::Result<bool> {
    palisade_tests::reaches(lab, from, to, PORT, WAIT)
}

/// b's policy with `spec` instead of its own (the same object: its last
/// good version is the good policy).
fn b_policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b-from-a, namespace: x}}\nspec:\n{spec}"
    )
}

struct Hostile {
    name: &'static str,
    bytes: Vec<u8>,
    /// What the status's error must say, besides the file's name.
    says: &'static str,
}

fn hostile_inputs() -> Vec<Hostile> {
    let mut inputs = Vec::new();
    // 100 MB of good policies, one after another.
    let doc = format!("{B_FROM_A}---\n");
    let copies = (100 << 20) / doc.len() + 1;
    inputs.push(Hostile {
        name: "100 MB policy file",
        bytes: doc.repeat(copies).into_bytes(),
        says: "above the limit of 4194304 bytes (4 MiB) for a source file; not read",
    });
    inputs.push(Hostile {
        name: "100,000 documents",
        bytes: "{}\n---\n".repeat(100_000).into_bytes(),
        says: "100000 documents, above the limit of 1000 per file",
    });
    // Billion laughs: 10^9 `lol`s from nine levels of ten aliases each, in
    // the part of the object Palisade accepts anything in.
    let mut bomb = b_policy("  podSelector: {}\n");
    bomb.push_str("status:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let uses = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("  a{i}: &a{i} [{uses}]\n"));
    }
    inputs.push(Hostile {
        name: "alias bomb (10^9 nodes)",
        bytes: bomb.into_bytes(),
        says: "alias",
    });
    let depth = 10_000;
    inputs.push(Hostile {
        name: "selector nested 10,000 deep",
        bytes: b_policy(&format!(
            "  podSelector: {{matchLabels: {}pod: b{}}}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        ))
        .into_bytes(),
        says: "nested deeper than 32 levels, the limit for a document",
    });
    let mut not_utf8 = B_FROM_A.replace("{pod: a}", "{pod: \u{1}}").into_bytes();
    let at = not_utf8
        .iter()
        .position(|&b| b == 1)
        .unwrap_or(not_utf8.len() - 1);
    not_utf8[at] = 0xff;
    inputs.push(Hostile {
        name: "invalid UTF-8",
        bytes: not_utf8,
        says: "not UTF-8: invalid byte 0xff at line 6",
    });
    let ports: String = (0..100_000)
        .map(|i| format!("    - port: {}\n", 1 + i % 65_535))
        .collect();
    inputs.push(Hostile {
        name: "100,000 ports",
        bytes: b_policy(&format!(
            "  podSelector: {{matchLabels: {{pod: b}}}}\n  ingress:\n  - ports:\n{ports}"
        ))
        .into_bytes(),
        says: "100000 ports in its rules, above the limit of 10000 per policy",
    });
    inputs.push(Hostile {
        name: "100,000 peers",
        bytes: b_policy(&format!(
            "  podSelector: {{matchLabels: {{pod: b}}}}\n  ingress:\n  - from:\n{}",
            "    - podSelector: {}\n".repeat(100_000)
        ))
        .into_bytes(),
        says: "100000 peers in its rules",
    });
    inputs
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Prints to the stderr descriptor (`eprintln!` is captured by the test
/// harness unless `--nocapture`).
fn report(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Resets the peak RSS to the current RSS (Linux 4.0+).
fn reset_peak(pid: u32) -> anyhow::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting VmHWM")
}

/// [`commit_and_wait`] with [`REFUSED_WITHIN`] for a limit.
fn commit_and_wait_long(daemon: &mut Enforcer) -> anyhow::Result<serde_json::Value> {
    let revision = daemon.commit()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(daemon.wait(revision, REFUSED_WITHIN))?;
    daemon.status()
}

/// Writes `bytes` as `name` in `source` atomically, as the lab writes.
fn write_bytes(source: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = source.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, source.join(name))?;
    Ok(())
}

struct Row {
    input: &'static str,
    file: &'static str,
    size: usize,
    error: String,
    before_kib: u64,
    peak_kib: u64,
    /// From the write to the status reporting the refusal.
    seconds: f64,
}

#[test]
fn hostile_input_is_refused_with_the_limit_named_memory_bounded_and_the_last_good_state_kept()
-> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(3)?;
    let dir: PathBuf = std::env::temp_dir().join(unique("palisade-hostile-"));
    let _listeners: Vec<TcpListener> = lab
        .pods
        .iter()
        .map(|p| in_netns(&p.netns, || TcpListener::bind((p.ip, PORT))))
        .collect::<Result<Result<_, _>, _>>()??;
    let args = DaemonArgs {
        resync_ms: 600_000,
        ..DaemonArgs::default()
    };
    let mut daemon = Enforcer::start_with(&palisade_bin()?, &lab.node, &dir, t.pins.base(), args)?;
    let source = dir.join("source");
    daemon.write("cluster.yaml", &lab_cluster(&lab, &[]))?;
    daemon.write("policy.yaml", B_FROM_A)?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(s["errors"].as_array().map(Vec::len), Some(0), "{s}");
    let holds = |what: &str| -> anyhow::Result<()> {
        if !reaches(&lab, 0, 1)? {
            bail!("{what}: a -> b is no longer allowed");
        }
        if reaches(&lab, 2, 1)? {
            bail!("{what}: c -> b is no longer blocked");
        }
        Ok(())
    };
    holds("the good policy")?;
    let bin = palisade_bin()?;

    let mut rows = Vec::new();
    for input in hostile_inputs() {
        // A fresh daemon for each input: memory an allocator keeps after
        // one input would hide what the next costs.
        daemon.restart(&bin, &lab.node)?;
        let s = commit_and_wait(&mut daemon)?;
        if s["errors"].as_array().is_some_and(|e| !e.is_empty()) {
            bail!("errors after a restart on the good files: {s}");
        }
        let pid = daemon.pid();
        for (file, replaces) in [("policy.yaml", true), ("hostile.yaml", false)] {
            let what = format!("{} as {file}", input.name);
            let before_kib = status_kib(pid, "VmRSS")?;
            reset_peak(pid)?;
            let started = std::time::Instant::now();
            write_bytes(&source, file, &input.bytes)?;
            let s = commit_and_wait_long(&mut daemon).with_context(|| what.clone())?;
            let seconds = started.elapsed().as_secs_f64();
            let peak_kib = status_kib(pid, "VmHWM")?;
            if daemon.pid() != pid {
                bail!("{what}: the daemon was restarted");
            }
            let errors: Vec<&str> = s["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .collect();
            let error = errors
                .iter()
                .find(|e| e.contains(file))
                .with_context(|| format!("{what}: no error names {file}: {s}"))?;
            if !error.contains(input.says) {
                bail!("{what}: {error:?} does not say {:?}", input.says);
            }
            if replaces && !error.contains("last good") {
                bail!("{what}: {error:?} does not say the last good version stays");
            }
            holds(&what)?;
            report(&format!(
                "{what}: {} bytes, peak RSS +{} KiB: {error}\n",
                input.bytes.len(),
                peak_kib.saturating_sub(before_kib)
            ));
            rows.push(Row {
                input: input.name,
                file,
                size: input.bytes.len(),
                error: error.to_string(),
                before_kib,
                peak_kib,
                seconds,
            });
            // Back to the good state.
            if replaces {
                daemon.write(file, B_FROM_A)?;
            } else {
                daemon.remove(file)?;
            }
            let s = commit_and_wait(&mut daemon)?;
            if s["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                bail!("{what}: errors after the good file came back: {s}");
            }
        }
    }

    let mut table = String::from(
        "\nhostile input: a fresh daemon for each input (as policy.yaml, then as hostile.yaml); its peak RSS reset before each file\n\
         | input | written as | size (bytes) | refused in (s) | RSS before (KiB) | peak during (KiB) | growth (KiB) | error in the status |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            r.input,
            r.file,
            r.size,
            r.seconds,
            r.before_kib,
            r.peak_kib,
            r.peak_kib.saturating_sub(r.before_kib),
            r.error
        );
    }
    report(&table);
    for r in &rows {
        let growth = r.peak_kib.saturating_sub(r.before_kib);
        assert!(
            growth < MAX_GROWTH_KIB,
            "{} as {}: peak RSS grew by {growth} KiB",
            r.input,
            r.file
        );
    }
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
