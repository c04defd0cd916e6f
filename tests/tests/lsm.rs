//! The BPF-LSM exec hook, where the kernel lets it enforce (the QEMU guest).
//!
//! An LSM program attaches without error where BPF LSM is not active and
//! then never runs, so the test counts real execs through the program's own
//! counter instead of trusting the attach. Where BPF LSM is not active the
//! test is reported as ignored, with the reason (`palisade_tests::harness`).

use std::process::Command;

use anyhow::bail;
use ebpf_common::maps;
use palisade::{
    loader::features::{BpfLsm, Features},
    loader::{attach, objects},
    observe::stats::read_pinned,
};
use palisade_tests::{
    TempPins,
    harness::{self, Needs},
};

fn exec_events(t: &TempPins) -> anyhow::Result<u64> {
    Ok(read_pinned(&t.pins.map(maps::LSM_STATS))?
        .iter()
        .filter(|r| r.direction == "local")
        .map(|r| r.events)
        .sum())
}

fn exec_true(times: u32) -> anyhow::Result<()> {
    for _ in 0..times {
        let status = Command::new("true").status()?;
        if !status.success() {
            bail!("true failed: {status}");
        }
    }
    Ok(())
}

fn main() {
    harness::main(&[(
        "the_exec_hook_sees_every_exec_and_outlives_its_loader",
        Needs::BpfLsm,
        the_exec_hook_sees_every_exec_and_outlives_its_loader,
    )])
}

fn the_exec_hook_sees_every_exec_and_outlives_its_loader() -> anyhow::Result<()> {
    let features = Features::probe();
    // The harness ran this only where BPF LSM is active or must be (the guest).
    if let BpfLsm::Inactive { reason } = &features.bpf_lsm {
        bail!("the guest boots with bpf in lsm=, yet: {reason}");
    }
    let t = TempPins::new()?;
    let mut loaded = palisade_tests::lsm_only(&t.pins, &features)?;
    let lsm = palisade_tests::lsm_object(&mut loaded)?;
    let states = attach::attach_lsm(lsm, &t.pins)?;
    // Every program but those of hooks this kernel lacks (the ACL hooks
    // before Linux 6.2, whose ACLs pass the xattr hooks).
    let kernel = palisade::loader::btf::Btf::from_sys_fs()?;
    let present = objects::LSM_HOOKS
        .iter()
        .filter(|(_, hook)| {
            !objects::lsm_hook_optional(hook)
                || kernel.func_id(&format!("bpf_lsm_{hook}")).is_some()
        })
        .count();
    assert!(present >= objects::LSM_HOOKS.len() - 2);
    assert_eq!(states.len(), present);

    let before = exec_events(&t)?;
    exec_true(3)?;
    let after = exec_events(&t)?;
    assert!(
        after >= before + 3,
        "exec hook did not run: {before} -> {after}"
    );

    // The pinned link keeps the hook after its loader is gone.
    drop(loaded);
    exec_true(2)?;
    let later = exec_events(&t)?;
    assert!(
        later >= after + 2,
        "hook ended with its loader: {after} -> {later}"
    );

    attach::unpin_links(&t.pins)?;
    Ok(())
}
