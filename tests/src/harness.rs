//! A test harness for tests that need a kernel feature: where it is
//! missing, the test is reported as ignored with the reason, never as
//! passed (libtest's own harness can only pass or fail a test that ran).
//! Used by the test targets with `harness = false` in Cargo.toml; the
//! output and the arguments are libtest's, so `--test-threads=1`, name
//! filters and the guest's runner work as before.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use palisade::loader::features::{BpfLsm, Features};

use crate::in_guest;

/// What a test needs of the kernel.
#[derive(Clone, Copy)]
pub enum Needs {
    Nothing,
    BpfLsm,
    /// This machine's kernel, not the guest's (a test whose guest run would
    /// add minutes and prove nothing more).
    Native,
    /// BPF LSM, and a kernel whose preemption model can be switched at run
    /// time (`PREEMPT_DYNAMIC`, debugfs's `sched/preempt`).
    BpfLsmAndPreemptSwitch,
}

impl Needs {
    /// Why the test cannot run here, if it cannot. The QEMU guest boots
    /// with BPF LSM active and a kernel with the preemption switch, so
    /// there a missing feature fails the test.
    fn missing(self) -> Option<String> {
        // Only a test that needs a feature probes for it (the probes may
        // mount securityfs, and debugfs for as long as they look).
        if matches!(self, Self::Native) {
            return in_guest().then(|| "runs natively, not in the guest".to_owned());
        }
        if matches!(self, Self::Nothing) {
            return None;
        }
        if !in_guest()
            && let BpfLsm::Inactive { reason } = Features::probe().bpf_lsm
        {
            return Some(format!(
                "BPF LSM cannot run here ({reason}); tests/vm runs this in a guest"
            ));
        }
        // The guest's kernel has the switch: there its absence fails the
        // test.
        if matches!(self, Self::BpfLsmAndPreemptSwitch) && !in_guest() && !preempt_switch() {
            return Some(format!(
                "this kernel cannot switch its preemption model at run time (no {}: \
                 PREEMPT_DYNAMIC)",
                Debugfs::PREEMPT
            ));
        }
        None
    }
}

/// Whether the kernel's preemption model can be switched through debugfs.
fn preempt_switch() -> bool {
    Debugfs::mount().is_ok_and(|_d| std::path::Path::new(Debugfs::PREEMPT).exists())
}

/// debugfs at its usual place, mounted for as long as this lives if it was
/// not mounted before.
pub struct Debugfs {
    mounted_here: bool,
}

impl Debugfs {
    pub const PATH: &str = "/sys/kernel/debug";
    /// The preemption model's switch: `none voluntary (full)`, the current
    /// one in parentheses.
    pub const PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

    pub fn mount() -> std::io::Result<Self> {
        if is_debugfs(Self::PATH) {
            return Ok(Self {
                mounted_here: false,
            });
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "debugfs", "debugfs", Self::PATH])
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "mount -t debugfs debugfs {}: {status}",
                Self::PATH
            )));
        }
        Ok(Self { mounted_here: true })
    }
}

impl Drop for Debugfs {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = std::process::Command::new("umount")
                .arg(Self::PATH)
                .status();
        }
    }
}

fn is_debugfs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(path) && fields.next() == Some("debugfs")
        })
    })
}

pub type Test = fn() -> anyhow::Result<()>;

/// Runs `tests` as libtest would and exits with its status.
pub fn main(tests: &[(&'static str, Needs, Test)]) -> ! {
    libtest_mimic::run(&Arguments::from_args(), trials(tests)).exit()
}

/// As [`main`], with `finally` run once every test is done: what the
/// tests shared (programs loaded once for all of them) is released before
/// the process exits.
pub fn main_then(tests: &[(&'static str, Needs, Test)], finally: fn()) -> ! {
    let conclusion = libtest_mimic::run(&Arguments::from_args(), trials(tests));
    finally();
    conclusion.exit()
}

fn trials(tests: &[(&'static str, Needs, Test)]) -> Vec<Trial> {
    tests
        .iter()
        .map(|&(name, needs, test)| {
            Trial::ignorable_test(name, move || {
                if let Some(reason) = needs.missing() {
                    return Ok(Completion::ignored_with(reason));
                }
                test()
                    .map(|()| Completion::Completed)
                    .map_err(|e| Failed::from(format!("{e:?}")))
            })
        })
        .collect()
}
