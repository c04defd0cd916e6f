//! Loads the embedded eBPF objects, adopting or creating their pinned maps.
//!
//! The loader is the only code that creates kernel objects. Everything it
//! pins lives under [`PinDir`], so a restarted or upgraded daemon finds the
//! same maps (and the counters and policy state in them) and enforcement
//! continues while no daemon runs.

pub mod attach;
pub mod btf;
pub mod features;
pub mod filter_helper;
pub mod layout;
pub mod objects;
pub mod sizes;
pub mod syscall;

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{Lsm, ProgramError, SchedClassifier, Xdp},
};

use crate::{loader::features::Features, paths::PinDir};
use layout::{LayoutError, Pinned};
use objects::Object;
use sizes::MapSizes;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading object {object}: {source}")]
    Object {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("object {object} has map {map} that the daemon does not pin or check")]
    UnexpectedMap { object: &'static str, map: String },
    #[error("object {object} has no program {program}")]
    MissingProgram {
        object: &'static str,
        program: &'static str,
    },
    #[error("verifying program {program} of {object}: {source}")]
    Program {
        object: &'static str,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("kernel structure offsets for the LSM programs: {0}")]
    Offsets(#[from] btf::BtfError),
}

/// How each map of an object was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOutcome {
    pub name: &'static str,
    pub pinned: Pinned,
}

/// An object whose programs passed the verifier and whose maps are pinned.
pub struct LoadedObject {
    pub ebpf: Ebpf,
    pub maps: Vec<MapOutcome>,
}

/// The LSM object only loads where BPF LSM can enforce; elsewhere the reason
/// is kept so status and metrics can say enforcement is missing.
pub enum LsmObject {
    Loaded(LoadedObject),
    Skipped { reason: String },
}

pub struct Loaded {
    pub xdp: LoadedObject,
    pub tc: LoadedObject,
    pub lsm: LsmObject,
}

/// The TC and XDP programs a load verifies (the LSM programs load
/// wherever BPF LSM is active). The daemon verifies the pods' TC programs
/// always, and of the XDP programs only those it will attach: the
/// verifier's time is most of a start, and a program verified for nothing
/// is that time lost (2.3 s of the guest's 20 for the XDP pod hook, under
/// QEMU's emulation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Programs {
    /// The pods' TC programs.
    pub tc: bool,
    /// The prefilter, for uplinks.
    pub prefilter: bool,
    /// The hook on a pod's veth (`palisade load --xdp-pod`).
    pub xdp_from_pod: bool,
}

impl Programs {
    pub const ALL: Self = Self {
        tc: true,
        prefilter: true,
        xdp_from_pod: true,
    };

    /// No network program: the maps (and the LSM programs where BPF LSM is
    /// active), for a caller that verifies each program it runs on first
    /// use (the datapath tests, each of which runs some of the four) or
    /// runs none.
    pub const NONE: Self = Self {
        tc: false,
        prefilter: false,
        xdp_from_pod: false,
    };

    fn wants(self, program: &str) -> bool {
        use ebpf_common::maps::programs;
        match program {
            programs::XDP_PREFILTER => self.prefilter,
            programs::XDP_FROM_POD => self.xdp_from_pod,
            programs::TC_FROM_POD | programs::TC_TO_POD => self.tc,
            _ => true,
        }
    }
}

/// Probes the kernel's features (logging each) and loads (or adopts) every
/// object, verifying `programs`: the first step of `palisade load` and of
/// the daemon's start.
pub fn load_probed(
    pins: &PinDir,
    sizes: &MapSizes,
    programs: Programs,
) -> Result<(Features, Loaded), LoadError> {
    let features = Features::probe();
    for line in features.lines() {
        tracing::info!("{line}");
    }
    let loaded = load_some(pins, &features, sizes, programs)?;
    Ok((features, loaded))
}

/// Attaches the XDP prefilter of `xdp` to each of `ifaces` (named in the
/// calling thread's network namespace): the uplinks of `palisade load
/// --xdp` and of the daemon's `--uplink`.
pub fn attach_prefilter(
    xdp: &mut LoadedObject,
    pins: &PinDir,
    ifaces: &[String],
    mode: aya::programs::XdpMode,
) -> Result<Vec<(String, attach::LinkState)>, attach::AttachError> {
    let mut out = Vec::new();
    for iface in ifaces {
        let on = |source| attach::AttachError::On {
            iface: iface.clone(),
            source: Box::new(source),
        };
        let ifindex = crate::netns::ifindex(iface)
            .map_err(|source| on(attach::AttachError::Interface(source)))?;
        let state = attach::attach_xdp(xdp, pins, ifindex, mode).map_err(on)?;
        out.push((iface.clone(), state));
    }
    Ok(out)
}

/// Loads all objects with the default map sizes.
pub fn load_all(pins: &PinDir, features: &Features) -> Result<Loaded, LoadError> {
    load_with(pins, features, &MapSizes::default())
}

/// Loads all objects. Fails before creating anything if a pinned map has the
/// wrong layout (or another size than configured), so a refused start
/// leaves the old state untouched.
pub fn load_with(
    pins: &PinDir,
    features: &Features,
    sizes: &MapSizes,
) -> Result<Loaded, LoadError> {
    load_some(pins, features, sizes, Programs::ALL)
}

/// [`load_with`], verifying only `programs` (every object's maps are made
/// or adopted and pinned all the same: the programs share them).
pub fn load_some(
    pins: &PinDir,
    features: &Features,
    sizes: &MapSizes,
    programs: Programs,
) -> Result<Loaded, LoadError> {
    prepare(pins)?;
    // Check every pin of every object first: a mismatch in the last object
    // must not leave the first ones half-adopted.
    for object in [&objects::XDP, &objects::TC, &objects::LSM] {
        for map in object.maps() {
            layout::check_pinned(&pins.map(map), &sizes.apply(layout::spec(map)?))?;
        }
    }
    let mut xdp = load_object(pins, &objects::XDP, sizes, &[])?;
    let mut took = VerifierCost::default();
    for &program in objects::XDP.programs {
        if !programs.wants(program) {
            continue;
        }
        let p: &mut Xdp = program_mut(&mut xdp.ebpf, &objects::XDP, program)?;
        let started = Instant::now();
        p.load()
            .map_err(|e| verify_error(&objects::XDP, program, e))?;
        took.add(program, started, p.info());
    }
    took.log(&objects::XDP);
    let mut tc = load_object(pins, &objects::TC, sizes, &[])?;
    let mut took = VerifierCost::default();
    for &program in objects::TC.programs {
        if !programs.wants(program) {
            continue;
        }
        let p: &mut SchedClassifier = program_mut(&mut tc.ebpf, &objects::TC, program)?;
        let started = Instant::now();
        p.load()
            .map_err(|e| verify_error(&objects::TC, program, e))?;
        took.add(program, started, p.info());
    }
    took.log(&objects::TC);
    let lsm = match &features.bpf_lsm {
        crate::loader::features::BpfLsm::Inactive { reason } => LsmObject::Skipped {
            reason: format!("BPF LSM is inactive: {reason}"),
        },
        // A kernel that runs BPF LSM but refuses these programs (one
        // older than `bpf_loop`, 5.17, one without `CONFIG_SECURITY_PATH`,
        // whose hooks most of them attach to, or a structure without a
        // field they read) loses the process and file side only: the network side
        // keeps enforcing, and every process and file rule is reported not
        // enforced, with this reason.
        crate::loader::features::BpfLsm::Active => match load_lsm(pins, sizes) {
            Ok(lsm) => LsmObject::Loaded(lsm),
            Err(e) => {
                tracing::error!("the LSM programs did not load: {e}");
                // An earlier daemon's programs must not go on judging with
                // rules nobody updates while the status says not enforced.
                for &(program, _) in objects::LSM_HOOKS {
                    let link = pins.link(&attach::lsm_link(program));
                    if let Err(e) = std::fs::remove_file(&link)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::error!("detaching {}: {e}", link.display());
                    }
                }
                LsmObject::Skipped {
                    reason: format!("the LSM programs did not load on this kernel: {e}"),
                }
            }
        },
    };
    Ok(Loaded { xdp, tc, lsm })
}

fn load_lsm(pins: &PinDir, sizes: &MapSizes) -> Result<LoadedObject, LoadError> {
    let kernel = btf::Btf::from_sys_fs()?;
    let offsets = btf::lsm_offsets(&kernel)?;
    let mut lsm = load_object(pins, &objects::LSM, sizes, &offsets)?;
    let btf = Btf::from_sys_fs()?;
    let mut took = VerifierCost::default();
    for &(program, hook) in objects::LSM_HOOKS {
        if objects::lsm_hook_optional(hook) && kernel.func_id(&format!("bpf_lsm_{hook}")).is_none()
        {
            tracing::info!("no {hook} hook in this kernel: {program} left out");
            continue;
        }
        let p: &mut Lsm = program_mut(&mut lsm.ebpf, &objects::LSM, program)?;
        let started = Instant::now();
        p.load(hook, &btf)
            .map_err(|e| verify_error(&objects::LSM, program, e))?;
        took.add(program, started, p.info());
    }
    took.log(&objects::LSM);
    Ok(lsm)
}

/// What the verifier took for one object's programs: the time a start
/// spends on them, and each program's distance from the verifier's limit
/// of a million instructions processed (the kernel reports the count).
#[derive(Default)]
struct VerifierCost {
    programs: usize,
    time: Duration,
    instructions: u64,
    most: Option<(&'static str, u32)>,
}

impl VerifierCost {
    fn add(
        &mut self,
        program: &'static str,
        started: Instant,
        info: Result<aya::programs::ProgramInfo, ProgramError>,
    ) {
        let time = started.elapsed();
        let processed = info.ok().and_then(|i| i.verified_instruction_count());
        tracing::debug!(program, ?time, processed, "verified");
        self.programs += 1;
        self.time += time;
        if let Some(n) = processed {
            self.instructions += u64::from(n);
            if self.most.is_none_or(|(_, most)| n > most) {
                self.most = Some((program, n));
            }
        }
    }

    fn log(&self, object: &Object) {
        let most = self
            .most
            .map(|(program, n)| format!(", the most {n} ({program})"))
            .unwrap_or_default();
        tracing::info!(
            "verified {} programs of {} in {:.2?}: {} instructions processed{most}",
            self.programs,
            object.name,
            self.time,
            self.instructions,
        );
    }
}

fn prepare(pins: &PinDir) -> Result<(), LoadError> {
    let parent = pins.base().parent().unwrap_or(pins.base());
    if !crate::loader::features::is_bpffs(parent) && !crate::loader::features::is_bpffs(pins.base())
    {
        return Err(LoadError::NotBpffs {
            path: parent.to_path_buf(),
        });
    }
    // Only root may reach the pins: a map opened from its pin can be read
    // and changed (the kernel checks the pin's own mode, 0600, too).
    for dir in [
        pins.base().to_path_buf(),
        pins.root().to_path_buf(),
        pins.maps(),
        pins.links(),
    ] {
        fs::create_dir_all(&dir)
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .map_err(|source| LoadError::PinDir { path: dir, source })?;
    }
    Ok(())
}

fn load_object(
    pins: &PinDir,
    object: &'static Object,
    sizes: &MapSizes,
    globals: &[(&'static str, u32)],
) -> Result<LoadedObject, LoadError> {
    let mut outcomes = Vec::new();
    let mut loader = EbpfLoader::new();
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    for map in object.maps() {
        // Checked again right before the load narrows the window in which
        // another process could swap the pin.
        let spec = sizes.apply(layout::spec(map)?);
        let pinned = layout::check_pinned(&pins.map(map), &spec)?;
        outcomes.push(MapOutcome { name: map, pinned });
        loader.map_pin_path(map, pins.map(map));
        loader.map_max_entries(map, spec.max_entries);
    }
    let ebpf = loader
        .load(object.bytes)
        .map_err(|source| LoadError::Object {
            object: object.name,
            source: Box::new(source),
        })?;
    if let Some((name, _)) = ebpf
        .maps()
        // `.rodata*`: the object's constants and the globals the loader
        // set (structure offsets), frozen read-only; nothing to pin.
        .find(|(name, _)| {
            !object.has_map(name) && !object.scratch.contains(name) && !name.starts_with(".rodata")
        })
    {
        return Err(LoadError::UnexpectedMap {
            object: object.name,
            map: name.to_owned(),
        });
    }
    for outcome in &outcomes {
        tracing::debug!(object = object.name, map = outcome.name, ?outcome.pinned, "map ready");
    }
    Ok(LoadedObject {
        ebpf,
        maps: outcomes,
    })
}

fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    object: &'static Object,
    program: &'static str,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(program).ok_or(LoadError::MissingProgram {
        object: object.name,
        program,
    })?;
    p.try_into().map_err(|e| verify_error(object, program, e))
}

fn verify_error(object: &'static Object, program: &'static str, e: ProgramError) -> LoadError {
    LoadError::Program {
        object: object.name,
        program,
        source: Box::new(e),
    }
}
