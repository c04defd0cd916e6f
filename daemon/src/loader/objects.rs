//! The eBPF objects built by build.rs, embedded in the binary.

use ebpf_common::maps::{self, programs};

/// One compiled eBPF object and the maps it must contain.
pub struct Object {
    /// The binary name `build.rs` gave it (`palisade-xdp`, ...).
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// Every map in the object, in groups; each is pinned and layout-checked.
    pub map_groups: &'static [&'static [&'static str]],
    /// Per-CPU working memory private to one run of a program: not pinned,
    /// holds nothing worth keeping across loads.
    pub scratch: &'static [&'static str],
    pub programs: &'static [&'static str],
}

impl Object {
    pub fn maps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.map_groups
            .iter()
            .flat_map(|group| group.iter().copied())
    }

    pub fn has_map(&self, name: &str) -> bool {
        self.maps().any(|m| m == name)
    }
}

/// The per-pod datapath (`ebpf_common::kernel::pod`), compiled into both the
/// TC and the XDP object; the pins make each map one map shared by both.
const POD_DATAPATH: &[&str] = &[
    maps::TC_STATS,
    maps::COUNTERS,
    maps::COUNTER_CELLS,
    maps::ENDPOINTS,
    maps::ENDPOINT_SLOTS,
    maps::OPENED,
    maps::IDENTITY,
    maps::IDENTITY_HOST,
    maps::POLICY,
    maps::POLICY_PORT,
    maps::SOURCE_PREFIXES,
    maps::NODE_LINK_LOCAL,
    maps::CT4,
    maps::CT6,
    maps::EPOCH,
    maps::FRAGS,
    maps::EVENTS,
];
const POD_SCRATCH: &[&str] = &["PAL_TC_SCRATCH", "PAL_TC_EP_COPY"];

pub static XDP: Object = Object {
    name: "palisade-xdp",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-xdp")),
    map_groups: &[
        &[
            maps::XDP_STATS,
            maps::XDP_DENY,
            maps::XDP_DENY_HOST,
            maps::XDP_POD_DENY,
            maps::XDP_POD_DST,
        ],
        POD_DATAPATH,
    ],
    scratch: POD_SCRATCH,
    programs: &[programs::XDP_PREFILTER, programs::XDP_FROM_POD],
};

pub static TC: Object = Object {
    name: "palisade-tc",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-tc")),
    map_groups: &[POD_DATAPATH],
    scratch: POD_SCRATCH,
    programs: &[programs::TC_FROM_POD, programs::TC_TO_POD],
};

pub static LSM: Object = Object {
    name: "palisade-lsm",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-lsm")),
    map_groups: &[&[
        maps::LSM_STATS,
        maps::LSM_PODS,
        maps::LSM_RULES,
        maps::LSM_SOURCES,
        maps::LSM_PATTERNS,
        maps::LSM_CONFIG,
        maps::LSM_DECIDE,
        maps::LSM_EVENTS,
    ]],
    scratch: &["PAL_LSM_SCRATCH"],
    programs: &[
        programs::LSM_EXEC,
        programs::LSM_FILE_OPEN,
        programs::LSM_UNLINK,
        programs::LSM_RENAME,
        programs::LSM_RENAME_TO,
        programs::LSM_LINK,
        programs::LSM_TRUNCATE,
        programs::LSM_CHMOD,
        programs::LSM_CHOWN,
        programs::LSM_MKNOD,
        programs::LSM_MKDIR,
        programs::LSM_SYMLINK,
        programs::LSM_RMDIR,
        programs::LSM_SETXATTR,
        programs::LSM_RMXATTR,
        programs::LSM_SET_ACL,
        programs::LSM_RM_ACL,
    ],
};

/// The kernel hook each LSM program attaches to.
pub const LSM_HOOKS: &[(&str, &str)] = &[
    (programs::LSM_EXEC, "bprm_check_security"),
    (programs::LSM_FILE_OPEN, "file_open"),
    // Writes that do not open the file (CONFIG_SECURITY_PATH).
    (programs::LSM_UNLINK, "path_unlink"),
    (programs::LSM_RENAME, "path_rename"),
    (programs::LSM_RENAME_TO, "path_rename"),
    (programs::LSM_LINK, "path_link"),
    (programs::LSM_TRUNCATE, "path_truncate"),
    (programs::LSM_CHMOD, "path_chmod"),
    (programs::LSM_CHOWN, "path_chown"),
    (programs::LSM_MKNOD, "path_mknod"),
    (programs::LSM_MKDIR, "path_mkdir"),
    (programs::LSM_SYMLINK, "path_symlink"),
    (programs::LSM_RMDIR, "path_rmdir"),
    // Extended attributes and ACLs: inode hooks, which name no mount.
    (programs::LSM_SETXATTR, "inode_setxattr"),
    (programs::LSM_RMXATTR, "inode_removexattr"),
    (programs::LSM_SET_ACL, "inode_set_acl"),
    (programs::LSM_RM_ACL, "inode_remove_acl"),
];

/// Hooks a kernel may lack, whose programs are then left out:
/// `inode_set_acl` and `inode_remove_acl` came with Linux 6.2; before,
/// an ACL is set and removed through `inode_setxattr` and
/// `inode_removexattr`, which judge it.
pub fn lsm_hook_optional(hook: &str) -> bool {
    matches!(hook, "inode_set_acl" | "inode_remove_acl")
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

    use super::*;

    /// The compiler's own copies of these, which LLVM's BPF backend calls
    /// where it does not expand a zeroing, a copy or a compare in place.
    const BYTE_LOOPS: &[&str] = &["memset", "memcpy", "memmove", "memcmp", "bcmp"];

    /// No program of the objects (nor a callback they run) calls one of
    /// [`BYTE_LOOPS`]. Each is a loop over bytes that the verifier walks
    /// through, with its precision tracking, on every way into the call:
    /// one zeroing of an event's 256-byte path made the path hooks' LSM
    /// programs 25 times as costly to verify (chmod: 283,668 instructions
    /// processed on Linux 6.1, 11,236 without), and the start of the daemon
    /// with them. The fix is in the code that wrote the call, never here.
    #[test]
    fn no_program_calls_a_byte_loop_of_the_compiler() {
        let mut calls = Vec::new();
        for object in [&XDP, &TC, &LSM] {
            let elf = object::File::parse(object.bytes).expect("an ELF object");
            // Where the byte loops' own bodies are (they may call each other).
            let loops: Vec<_> = elf
                .symbols()
                .filter(|s| s.name().is_ok_and(|n| BYTE_LOOPS.contains(&n)))
                .collect();
            // A call to a global (or weak) function is relocated against
            // its name, which is what is looked for below; one to a local
            // function may be relocated against its section, and would
            // pass unseen.
            for f in &loops {
                assert!(
                    !f.is_local(),
                    "{}: {} is local: calls to it may not name it; read the calls' targets instead",
                    object.name,
                    f.name().unwrap_or("?"),
                );
            }
            let bodies: Vec<_> = loops
                .iter()
                .map(|s| (s.section_index(), s.address()..s.address() + s.size()))
                .collect();
            for section in elf.sections() {
                for (at, relocation) in section.relocations() {
                    let RelocationTarget::Symbol(index) = relocation.target() else {
                        continue;
                    };
                    let name = elf.symbol_by_index(index).and_then(|s| s.name());
                    let Ok(name) = name else { continue };
                    let inside_one = bodies
                        .iter()
                        .any(|(s, body)| *s == Some(section.index()) && body.contains(&at));
                    if BYTE_LOOPS.contains(&name) && !inside_one {
                        let from = section.name().unwrap_or("?");
                        calls.push(format!("{}: {from}+{at:#x} calls {name}", object.name));
                    }
                }
            }
        }
        assert!(calls.is_empty(), "{}", calls.join("\n"));
    }
}
