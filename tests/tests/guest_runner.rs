//! The QEMU guest runner reports the guest command's own exit status, so a
//! failing guest test fails `make test`. Runs on the host only: it boots
//! guests itself.

use std::{path::PathBuf, process::Command};

fn runner() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vm/run-guest.sh")
}

fn run_in_guest(extra: &[&str], command: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(runner())
        .args(extra)
        .arg("--")
        .args(command)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let code = out
        .status
        .code()
        .ok_or_else(|| anyhow::anyhow!("runner killed by a signal: {text}"))?;
    Ok((code, text))
}

#[test]
fn success_and_failure_in_the_guest_are_the_runner_exit_status() -> anyhow::Result<()> {
    let (code, text) = run_in_guest(&[], &["true"])?;
    assert_eq!(code, 0, "{text}");
    let (code, text) = run_in_guest(&[], &["sh", "-c", "echo failing on purpose; exit 7"])?;
    assert_eq!(code, 7, "{text}");
    assert!(
        text.contains("failing on purpose"),
        "guest output not shown: {text}"
    );
    Ok(())
}

#[test]
fn arguments_reach_the_guest_intact_and_files_are_added() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("guest-runner-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("payload.txt");
    std::fs::write(&file, "it's here\n")?;
    let file = file.to_string_lossy().into_owned();
    let result = run_in_guest(
        &["--add", &file],
        &[
            "sh",
            "-c",
            "test \"$(cat payload.txt)\" = \"$1\"",
            "sh",
            "it's here",
        ],
    );
    std::fs::remove_dir_all(&dir)?;
    let (code, text) = result?;
    assert_eq!(code, 0, "{text}");
    Ok(())
}

#[test]
fn a_hung_guest_is_a_failure_not_a_pass() -> anyhow::Result<()> {
    let (code, text) = run_in_guest(&["--timeout", "15"], &["sleep", "600"])?;
    assert_eq!(code, 125, "{text}");
    assert!(text.contains("timed out"), "{text}");
    Ok(())
}
