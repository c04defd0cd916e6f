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
}

impl Needs {
    /// Why the test cannot run here, if it cannot. The QEMU guest boots
    /// with BPF LSM active, so there a missing feature fails the test.
    fn missing(self) -> Option<String> {
        // Only a test that needs a feature probes for it (the probe may
        // mount securityfs).
        if matches!(self, Self::Native) {
            return in_guest().then(|| "runs natively, not in the guest".to_owned());
        }
        if matches!(self, Self::Nothing) || in_guest() {
            return None;
        }
        match Features::probe().bpf_lsm {
            BpfLsm::Inactive { reason } => Some(format!(
                "BPF LSM cannot run here ({reason}); tests/vm runs this in a guest"
            )),
            BpfLsm::Active => None,
        }
    }
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
