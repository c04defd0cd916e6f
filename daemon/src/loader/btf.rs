//! Structure offsets from the running kernel's BTF.
//!
//! aya emits no CO-RE relocations, so the LSM programs read kernel
//! structures (`file`, `inode`, `linux_binprm`) at offsets the loader looks
//! up here and hands them as globals. A field the kernel does not have (or
//! has as a bitfield) is an error at load: never a guessed constant.

use std::{fs, io, path::Path};

use ebpf_common::lsm::globals;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's struct {ty} has no field {field} (or only as a bitfield)")]
    NoField { ty: String, field: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    /// In bits.
    offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    members: Vec<Member>,
}

/// The types of one BTF blob, by id (index 0 is `void`).
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        if b.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let strings = b
            .get(hdr + str_off..hdr + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let t = b
            .get(hdr + type_off..hdr + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < t.len() {
            let name = u32_at(t, at)?;
            let info = u32_at(t, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let bitfields = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + 12 * m;
                        let raw = u32_at(t, base + 8)?;
                        members.push(Member {
                            name: u32_at(t, base)?,
                            ty: u32_at(t, base + 4)?,
                            // With kind_flag, the top byte is a bitfield's
                            // size; a bitfield has no byte offset to read.
                            offset: if bitfields && raw >> 24 != 0 {
                                u32::MAX
                            } else {
                                raw & if bitfields { 0xff_ffff } else { u32::MAX }
                            },
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                members,
            });
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// The byte offset of `field` in `struct ty`, looking into anonymous
    /// structs and unions as C does.
    pub fn field_offset(&self, ty: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == ty.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        self.find(id, field.as_bytes(), 0)
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField {
                ty: ty.to_owned(),
                field: field.to_owned(),
            })
    }

    /// The id of the function `name` (an LSM program's attach point,
    /// `bpf_lsm_<hook>`).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_FUNC && self.name(t.name) == name.as_bytes())
            .map(|id| id as u32)
    }

    fn find(&self, id: usize, field: &[u8], depth: u32) -> Option<u32> {
        let t = self.types.get(id)?;
        for m in &t.members {
            if m.offset == u32::MAX {
                continue;
            }
            if self.name(m.name) == field {
                return Some(m.offset);
            }
            if m.name == 0 && depth < 8 {
                let inner = self.resolve(m.ty as usize)?;
                if let Some(off) = self.find(inner, field, depth + 1) {
                    return Some(m.offset + off);
                }
            }
        }
        None
    }

    /// An anonymous member's struct or union. (Anonymous members are
    /// structs or unions directly in every kernel we know; anything else is
    /// not looked into.)
    fn resolve(&self, id: usize) -> Option<usize> {
        matches!(self.types.get(id)?.kind, KIND_STRUCT | KIND_UNION).then_some(id)
    }
}

/// The globals the LSM programs read, by name, for this kernel.
pub fn lsm_offsets(btf: &Btf) -> Result<Vec<(&'static str, u32)>, BtfError> {
    let (sb_link, sb_next) = sb_mount_links(btf)?;
    Ok(vec![
        (globals::FILE_F_PATH, btf.field_offset("file", "f_path")?),
        (globals::FILE_F_MODE, btf.field_offset("file", "f_mode")?),
        (globals::FILE_F_FLAGS, btf.field_offset("file", "f_flags")?),
        (globals::FILE_F_INODE, btf.field_offset("file", "f_inode")?),
        (globals::INODE_I_UID, btf.field_offset("inode", "i_uid")?),
        (globals::INODE_I_MODE, btf.field_offset("inode", "i_mode")?),
        (
            globals::BPRM_FILE,
            btf.field_offset("linux_binprm", "file")?,
        ),
        (globals::TASK_MM, btf.field_offset("task_struct", "mm")?),
        (
            globals::MM_EXE_FILE,
            btf.field_offset("mm_struct", "exe_file")?,
        ),
        (globals::TASK_FS, btf.field_offset("task_struct", "fs")?),
        (globals::FS_ROOT, btf.field_offset("fs_struct", "root")?),
        (globals::PATH_MNT, btf.field_offset("path", "mnt")?),
        (globals::PATH_DENTRY, btf.field_offset("path", "dentry")?),
        (
            globals::DENTRY_PARENT,
            btf.field_offset("dentry", "d_parent")?,
        ),
        (
            globals::DENTRY_NAME_LEN,
            btf.field_offset("dentry", "d_name")? + btf.field_offset("qstr", "len")?,
        ),
        (
            globals::DENTRY_NAME,
            btf.field_offset("dentry", "d_name")? + btf.field_offset("qstr", "name")?,
        ),
        (
            globals::DENTRY_INODE,
            btf.field_offset("dentry", "d_inode")?,
        ),
        (
            globals::VFSMOUNT_ROOT,
            btf.field_offset("vfsmount", "mnt_root")?,
        ),
        (globals::MOUNT_MNT, btf.field_offset("mount", "mnt")?),
        (
            globals::MOUNT_PARENT,
            btf.field_offset("mount", "mnt_parent")?,
        ),
        (
            globals::MOUNT_MOUNTPOINT,
            btf.field_offset("mount", "mnt_mountpoint")?,
        ),
        (globals::DENTRY_SB, btf.field_offset("dentry", "d_sb")?),
        (
            globals::SB_MOUNTS,
            btf.field_offset("super_block", "s_mounts")?,
        ),
        (globals::MOUNT_SB_LINK, sb_link),
        (globals::MOUNT_SB_NEXT, sb_next),
        (globals::MOUNT_NS, btf.field_offset("mount", "mnt_ns")?),
        (
            globals::TASK_NSPROXY,
            btf.field_offset("task_struct", "nsproxy")?,
        ),
        (
            globals::NSPROXY_MNT_NS,
            btf.field_offset("nsproxy", "mnt_ns")?,
        ),
        (globals::TASK_CRED, btf.field_offset("task_struct", "cred")?),
        (
            globals::TASK_REAL_CRED,
            btf.field_offset("task_struct", "real_cred")?,
        ),
    ])
}

/// How a superblock's mounts are linked: through `mnt_instance`, a
/// `list_head` whose links point into the next mount (until Linux 6.16),
/// or `mnt_next_for_sb`, which points at the next mount itself. The
/// offset to subtract from a link to find its mount, and where the next
/// link is read.
fn sb_mount_links(btf: &Btf) -> Result<(u32, u32), BtfError> {
    match btf.field_offset("mount", "mnt_instance") {
        Ok(instance) => Ok((instance, instance)),
        Err(_) => Ok((0, btf.field_offset("mount", "mnt_next_for_sb")?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_offsets_are_found() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        };
        let offsets = lsm_offsets(&btf).unwrap();
        assert_eq!(offsets.len(), 30);
        assert!(btf.func_id("bpf_lsm_file_open").is_some());
        assert!(btf.func_id("no_such_function_here").is_none());
        // `f_path` and `f_inode` are pointers-and-more deep into `file`,
        // never at its start; `i_uid` follows `i_mode` and `i_opflags`.
        // Offsets may be 0 (`path.mnt`, `qstr`'s union) but never past a
        // page.
        for (name, off) in &offsets {
            assert!(*off < 4096, "{name} = {off}");
        }
        // Either list form: a `list_head` (link and next the same field)
        // or a pointer chain to the mount itself.
        let (link, next) = sb_mount_links(&btf).unwrap();
        assert!(link == next || (link == 0 && next > 0), "{link} {next}");
        assert!(btf.field_offset("file", "no_such_field").is_err());
        assert!(btf.field_offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Btf::parse(b"not btf").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
    }
}
