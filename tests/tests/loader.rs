//! The loader against the real kernel: objects pass the verifier, maps are
//! pinned and adopted, and a pinned map with the wrong layout is refused.
//! The LSM object's test is reported as ignored, with the reason, where BPF
//! LSM is not active (`palisade_tests::harness`).

use anyhow::{Context as _, bail, ensure};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use ebpf_common::{
    maps::{self, kind},
    reason,
    stats::{Counter, direction, stat_index},
};
use palisade::{
    loader::features::{BpfLsm, Features},
    loader::{
        self, LoadError, LsmObject,
        layout::{LayoutError, Pinned},
    },
};
use palisade_tests::{
    TempPins,
    harness::{self, Needs},
    pin_raw_map,
};

fn main() {
    harness::main(&[
        (
            "loads_every_object_and_pins_its_maps",
            Needs::Nothing,
            loads_every_object_and_pins_its_maps,
        ),
        (
            "loads_the_lsm_object_and_pins_its_map",
            Needs::BpfLsm,
            loads_the_lsm_object_and_pins_its_map,
        ),
        (
            "a_second_load_adopts_the_pinned_maps_and_their_contents",
            Needs::Nothing,
            a_second_load_adopts_the_pinned_maps_and_their_contents,
        ),
        (
            "a_pinned_map_with_the_wrong_layout_is_refused_not_reused",
            Needs::Nothing,
            a_pinned_map_with_the_wrong_layout_is_refused_not_reused,
        ),
        (
            "a_pinned_map_of_another_type_is_refused",
            Needs::Nothing,
            a_pinned_map_of_another_type_is_refused,
        ),
        (
            "the_status_command_reads_every_map_it_finds_pinned",
            Needs::Nothing,
            the_status_command_reads_every_map_it_finds_pinned,
        ),
        (
            "only_root_reaches_the_pins",
            Needs::Nothing,
            only_root_reaches_the_pins,
        ),
    ])
}

/// `palisade status` over freshly made maps (and the LSM object where BPF
/// LSM is active; no network program is verified): every map pinned
/// reads as ok (a per-CPU map that is not a stats map was once reported
/// unreadable), and the only absent ones are the LSM object's where it was
/// not loaded.
fn the_status_command_reads_every_map_it_finds_pinned() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    // The maps are what it reads: no network program is verified.
    let loaded = palisade_tests::lsm_only(&t.pins, &Features::probe())?;
    let lsm_loaded = matches!(loaded.lsm, LsmObject::Loaded(_));
    let out = std::process::Command::new(palisade_tests::palisade_bin()?)
        .arg("--pin-base")
        .arg(&t.base)
        .args(["status", "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "palisade status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let reported = report["maps"].as_array().context("no maps in the report")?;
    ensure!(
        reported.len() == maps::SPECS.len(),
        "{} maps reported",
        reported.len()
    );
    for m in reported {
        let (name, state) = (
            m["name"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
        );
        let lsm_map = name.starts_with("PAL_LSM_");
        if state == "absent" {
            ensure!(lsm_map && !lsm_loaded, "{name} reported absent");
        } else {
            ensure!(state.starts_with("ok (id "), "{name} reported {state:?}");
        }
    }
    Ok(())
}

/// The pins (maps can be read and changed through them) are root's alone:
/// directories 0700, pins without group or other bits, and an unprivileged
/// process can neither list the directory nor open a pin.
fn only_root_reaches_the_pins() -> anyhow::Result<()> {
    use std::os::unix::{fs::PermissionsExt as _, process::CommandExt as _};
    let t = TempPins::new()?;
    let _loaded = palisade_tests::network_maps(&t.pins)?;
    for dir in [t.pins.root().to_path_buf(), t.pins.maps(), t.pins.links()] {
        let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
        ensure!(mode == 0o700, "{} has mode {mode:o}", dir.display());
    }
    let pin = t.pins.map(maps::XDP_STATS);
    let mode = std::fs::metadata(&pin)?.permissions().mode() & 0o777;
    ensure!(mode & 0o077 == 0, "{} has mode {mode:o}", pin.display());
    for (what, program, path) in [
        ("open a pinned map", "cat", &pin),
        ("list the maps", "ls", &t.pins.maps()),
    ] {
        let out = std::process::Command::new(program)
            .arg(path)
            .uid(65534)
            .gid(65534)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("Permission denied"),
            "nobody could {what}: {} {err}",
            out.status
        );
    }
    Ok(())
}

/// Every object the kernel can run; the LSM object only where the feature
/// probe says BPF LSM is active, and skipped with the probe's own reason
/// where it is not.
fn loads_every_object_and_pins_its_maps() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let features = Features::probe();
    let loaded = loader::load_all(&t.pins, &features)?;
    for name in [maps::XDP_STATS, maps::TC_STATS] {
        assert!(t.pins.map(name).exists(), "{name} not pinned");
    }
    assert!(loaded.xdp.maps.iter().all(|m| m.pinned == Pinned::Absent));
    match (&features.bpf_lsm, &loaded.lsm) {
        (BpfLsm::Active, LsmObject::Loaded(_)) => {}
        (BpfLsm::Inactive { reason }, LsmObject::Skipped { reason: skipped }) => {
            assert_eq!(skipped, &format!("BPF LSM is inactive: {reason}"));
            assert!(!t.pins.map(maps::LSM_STATS).exists());
        }
        (probe, _) => bail!("probe says {probe:?} but the loader disagreed"),
    }
    Ok(())
}

/// Runs where BPF LSM is active, as in the guest, which boots a stock
/// kernel with bpf in lsm=: there it must load.
fn loads_the_lsm_object_and_pins_its_map() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let features = Features::probe();
    if let BpfLsm::Inactive { reason } = &features.bpf_lsm {
        bail!("BPF LSM must be active in the guest: {reason}");
    }
    let mut loaded = palisade_tests::lsm_only(&t.pins, &features)?;
    let lsm = palisade_tests::lsm_object(&mut loaded)?;
    // Every map of the object is pinned and checked.
    assert_eq!(lsm.maps.len(), loader::objects::LSM.maps().count());
    for map in loader::objects::LSM.maps() {
        assert!(t.pins.map(map).exists(), "{map} not pinned");
    }
    Ok(())
}

fn a_second_load_adopts_the_pinned_maps_and_their_contents() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let first = palisade_tests::network_maps(&t.pins)?;
    let path = t.pins.map(maps::TC_STATS);
    let cell = stat_index(direction::EGRESS, reason::PASS_UNENFORCED);
    {
        let mut array: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(Map::from_map_data(MapData::from_pin(&path)?)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
        let values = vec![
            Counter {
                events: 7,
                bytes: 700
            };
            cpus
        ];
        array.set(cell, PerCpuValues::try_from(values)?, 0)?;
    }
    drop(first);

    let second = palisade_tests::network_maps(&t.pins)?;
    let tc = second
        .tc
        .maps
        .iter()
        .find(|m| m.name == maps::TC_STATS)
        .context("tc stats outcome")?;
    assert!(
        matches!(tc.pinned, Pinned::Matches { .. }),
        "{:?}",
        tc.pinned
    );
    let rows = palisade::observe::stats::read_pinned(&path)?;
    let cpus = u64::from(aya::util::nr_cpus().map_err(|(_, e)| e)?.get());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].events, 7 * cpus);
    assert_eq!(rows[0].bytes, 700 * cpus);
    Ok(())
}

fn a_pinned_map_with_the_wrong_layout_is_refused_not_reused() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    std::fs::create_dir_all(t.pins.maps())?;
    // What an older daemon with 8-byte counters and a smaller table would leave.
    let path = t.pins.map(maps::TC_STATS);
    pin_raw_map(&path, kind::PERCPU_ARRAY, 4, 8, 2)?;
    let before = aya::maps::MapInfo::from_pin(&path)?.id();

    let err = match loader::load_all(&t.pins, &palisade_tests::network_only()) {
        Ok(_) => bail!("a mismatched pinned map was accepted"),
        Err(e) => e,
    };
    let text = err.to_string();
    match &err {
        LoadError::Layout(LayoutError::Mismatch { mismatches, .. }) => {
            let fields: Vec<_> = mismatches.iter().map(|m| m.field).collect();
            assert_eq!(fields, ["value size", "max entries"], "{text}");
        }
        other => bail!("expected a layout mismatch, got: {other}"),
    }
    assert!(text.contains("PAL_TC_STATS"), "{text}");
    assert!(text.contains("value size is 8, expected 16"), "{text}");
    assert!(text.contains("refusing to reuse"), "{text}");

    // Refused before anything was created or replaced.
    assert_eq!(aya::maps::MapInfo::from_pin(&path)?.id(), before);
    assert!(
        !t.pins.map(maps::XDP_STATS).exists(),
        "XDP map created despite the refusal"
    );
    Ok(())
}

fn a_pinned_map_of_another_type_is_refused() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    std::fs::create_dir_all(t.pins.maps())?;
    let path = t.pins.map(maps::XDP_STATS);
    pin_raw_map(&path, kind::HASH, 4, 16, 3)?;
    let Err(err) = loader::load_all(&t.pins, &palisade_tests::network_only()) else {
        bail!("a hash map was adopted as a per-CPU array");
    };
    assert!(
        err.to_string().contains("map type is 1, expected 6"),
        "{err}"
    );
    Ok(())
}
