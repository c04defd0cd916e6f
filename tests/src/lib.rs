//! Fixtures for the privileged integration tests: the namespaces and the
//! daemon under test are the lab's (`palisade_lab::fixtures`), shared with
//! the bench.
//!
//! Every fixture creates its own namespaces and pin directory and removes
//! them on drop, so a failing test leaves nothing behind. The tests run one
//! at a time (`--test-threads=1`): they share the kernel.

pub mod datapath_harness;
pub mod harness;
pub mod install;
pub mod packet;

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};
use palisade::{
    loader::{self, LoadError, Loaded, Programs, features::Features, sizes::MapSizes},
    paths::PinDir,
};
pub use palisade_lab::fixtures::{BridgeLab, POD_IP, VethPair, commit_and_wait};
use palisade_lab::{netns::Netns, probe::Observed};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call, for kernel objects.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `palisade` binary next to this test's build directory (in the QEMU
/// guest: beside the test binary, where tests/vm/guest-tests.sh puts it).
pub fn palisade_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if in_guest() {
        return exe
            .parent()
            .map(|d| d.join("palisade"))
            .filter(|b| b.exists())
            .context("no palisade binary beside the test binary in the guest");
    }
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("palisade"))
        .context("no build directory")?;
    if !bin.exists() {
        bail!(
            "{} missing: `cargo build -p palisade-cli` first (make privileged does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A pinned map under `pins`, opened with aya itself: a test that changes
/// kernel state behind the daemon's back does it as any other process
/// would, not through the daemon's own typed handles.
pub fn pinned<T>(pins: &PinDir, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let path = pins.map(name);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(T::try_from(aya::maps::Map::from_map_data(data)?)?)
}

/// A pin directory of the test's own on bpffs, removed on drop.
pub struct TempPins {
    pub pins: PinDir,
    /// The base (`--pin-base`); the ABI's directory is below it.
    pub base: PathBuf,
}

impl TempPins {
    pub fn new() -> anyhow::Result<Self> {
        let base = PathBuf::from(palisade::paths::BPFFS).join(unique("palisade-test-"));
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Ok(Self {
            pins: PinDir::new(&base),
            base,
        })
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// The LSM object a load loaded, or why it skipped it, as an error:
/// tests that ask for it run where BPF LSM is active (the guest).
pub fn lsm_object(loaded: &mut Loaded) -> anyhow::Result<&mut loader::LoadedObject> {
    match &mut loaded.lsm {
        palisade::loader::LsmObject::Loaded(lsm) => Ok(lsm),
        palisade::loader::LsmObject::Skipped { reason } => {
            bail!("BPF LSM is active but the loader skipped the LSM object: {reason}")
        }
    }
}

/// The network objects with only `programs` verified, BPF LSM left out,
/// the maps at their default sizes: for a test that attaches some of them.
pub fn network_programs(pins: &PinDir, programs: Programs) -> Result<Loaded, LoadError> {
    loader::load_some(pins, &network_only(), &MapSizes::default(), programs)
}

/// The network objects' maps made and pinned in `pins`, and no program
/// verified: for a test of what the syncer writes, which runs no program
/// (under the guest's TCG the verifier would take 12 s of each such test).
pub fn network_maps(pins: &PinDir) -> Result<Loaded, LoadError> {
    network_programs(pins, Programs::NONE)
}

/// Every object's maps and, where BPF LSM is active, the LSM programs;
/// none of the network programs verified: for the tests of the process and
/// file rules, and of `palisade status` (which reads the maps).
pub fn lsm_only(pins: &PinDir, features: &Features) -> Result<Loaded, LoadError> {
    loader::load_some(pins, features, &MapSizes::default(), Programs::NONE)
}

/// This kernel's features without BPF LSM, for a test of the network
/// objects only: in the guest, loading the LSM object too would cost the
/// verifier's half a minute under TCG and test nothing more.
pub fn network_only() -> Features {
    Features {
        bpf_lsm: loader::features::BpfLsm::Inactive {
            reason: "left out: the test needs the network objects only".to_owned(),
        },
        ..Features::probe()
    }
}

/// Runs `f` on a thread inside `ns`.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    Ok(ns.run(f)?)
}

/// `ip ARGS` inside `ns` (a child forked from a thread in a namespace is
/// in it too).
pub fn ip_in(ns: &Netns, args: &str) -> anyhow::Result<()> {
    let status = in_netns(ns, || {
        std::process::Command::new("ip")
            .args(args.split(' '))
            .status()
    })??;
    anyhow::ensure!(status.success(), "ip {args}: {status}");
    Ok(())
}

/// True when running inside the QEMU guest started by tests/vm/run-guest.sh,
/// where BPF LSM must be active.
pub fn in_guest() -> bool {
    std::env::var_os("PALISADE_IN_GUEST").is_some()
}

/// Whether an attempt got an answer (`true`) or none at all (`false`),
/// read as the lab's probes read it: only silence is a block, since an
/// enforcer that drops a packet sends nothing back. A refusal, an
/// unreachable host or any other error is neither, and fails the test.
pub fn answered<T>(attempt: std::io::Result<T>, what: &str) -> anyhow::Result<bool> {
    match attempt {
        Ok(_) => Ok(true),
        Err(e) => match Observed::of_error(&e) {
            Observed::Blocked(_) => Ok(false),
            _ => bail!("{what}: {e}, neither an answer nor a block"),
        },
    }
}

/// The pods of a [`BridgeLab`] as a source holds them: namespace `x` and
/// pods `a`, `b`, `c`, `d` by position, each labelled `pod: <its name>` unless
/// `relabel` gives it another value.
pub fn lab_cluster(lab: &BridgeLab, relabel: &[(&str, &str)]) -> String {
    let mut text =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n".to_owned();
    for (pod, name) in lab.pods.iter().zip(["a", "b", "c", "d"]) {
        let label = relabel
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(name, |(_, l)| l);
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{pod: {label}}}}}\nstatus: {{podIP: {}}}\n",
            pod.ip
        ));
    }
    text
}

/// Pod b admits only pods labelled `pod: a`, on 8080.
pub const B_FROM_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 8080}]}]\n";

/// Whether a TCP connection from pod `from` to pod `to` (by position) on
/// `port` gets an answer, read as [`answered`] reads it.
pub fn reaches(
    lab: &BridgeLab,
    from: usize,
    to: usize,
    port: u16,
    wait: std::time::Duration,
) -> anyhow::Result<bool> {
    let target = std::net::SocketAddr::from((lab.pods[to].ip, port));
    answered(
        in_netns(&lab.pods[from].netns, || {
            std::net::TcpStream::connect_timeout(&target, wait)
        })?,
        &format!("pod {from} -> {target}"),
    )
}

/// Creates and pins a map with an arbitrary layout through the raw syscall,
/// standing in for a map left behind by a daemon of another layout.
pub fn pin_raw_map(
    path: &Path,
    map_type: u32,
    key: u32,
    value: u32,
    max: u32,
) -> anyhow::Result<()> {
    let mut create = [0u32; 16];
    create[..4].copy_from_slice(&[map_type, key, value, max]);
    // SAFETY: BPF_MAP_CREATE reads `create`, which is zero-padded past the
    // fields set; the kernel accepts a zero tail.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    if fd < 0 {
        bail!("BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    }
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut pin = [0u64; 3];
    pin[0] = c.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: BPF_OBJ_PIN reads the path pointer and fd from `pin`, both live.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd came from BPF_MAP_CREATE above; the pin keeps the map alive.
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        bail!("BPF_OBJ_PIN {}: {err}", path.display());
    }
    Ok(())
}

/// Makes `map` read-only to every process from now on (`BPF_MAP_FREEZE`;
/// programs still write it): the next write to it from user space fails,
/// as a write to a broken map would.
pub fn freeze_map(map: &aya::maps::MapData) -> anyhow::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_FREEZE: libc::c_long = 22;
    /// The leading field of `union bpf_attr` for map commands, the rest zero.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        rest: [u8; 124],
    }
    let attr = Attr {
        map_fd: u32::try_from(map.fd().as_fd().as_raw_fd())?,
        rest: [0; 124],
    };
    // SAFETY: `attr` outlives the call and is as large as the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_FREEZE,
            &attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    anyhow::ensure!(rc == 0, "{}", std::io::Error::last_os_error());
    Ok(())
}

/// The daemon's filter helper, as its status `s` names it: the daemon's
/// child, holding `CAP_NET_ADMIN` alone by the status and by every
/// thread's `/proc` sets (effective and permitted exactly that,
/// inheritable and ambient empty, no_new_privs set).
pub fn filter_helper_holds_net_admin_alone(
    s: &serde_json::Value,
    daemon_pid: u32,
) -> anyhow::Result<()> {
    use palisade::node::capabilities::{CAP_NET_ADMIN, threads};
    let helper = &s["tc_filter_helper"];
    anyhow::ensure!(
        helper["capabilities"] == serde_json::json!(["NET_ADMIN"]),
        "the helper's capabilities: {s}"
    );
    let pid = helper["pid"].as_u64().context("no helper pid")?;
    let net_admin = 1u64 << CAP_NET_ADMIN;
    let threads = threads(&pid.to_string())?;
    anyhow::ensure!(!threads.is_empty(), "helper {pid} has no threads");
    for (thread, c) in threads {
        println!(
            "filter helper {thread}: CapEff {:#x} CapPrm {:#x} CapInh {:#x} CapAmb {:#x} CapBnd {:#x} NoNewPrivs {}",
            c.effective, c.permitted, c.inheritable, c.ambient, c.bounding, c.no_new_privs
        );
        anyhow::ensure!(
            c.effective == net_admin && c.permitted == net_admin,
            "the filter helper's {thread} holds more or less than NET_ADMIN"
        );
        anyhow::ensure!(
            c.inheritable == 0 && c.ambient == 0 && c.no_new_privs,
            "the filter helper's {thread}: inheritable or ambient left, or no no_new_privs"
        );
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let parent = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    anyhow::ensure!(
        parent == Some(daemon_pid),
        "helper {pid}'s parent: {parent:?}"
    );
    Ok(())
}
