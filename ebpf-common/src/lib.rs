//! The contract between Palisade's eBPF programs and its daemon.
//!
//! Everything both sides must agree on lives here and only here: the ABI
//! version that names the pin directory, map names and layouts, and reason
//! codes. Types are `#[repr(C)]` with explicit padding and compile-time size
//! checks, so a layout change cannot slip through unnoticed.
#![no_std]
// BPF's atomic add (`kernel::add`): the target offers no atomic
// read-modify-write through `core::sync::atomic`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

pub mod datapath;
pub mod lsm;
pub mod maps;
pub mod reason;
pub mod stats;

/// Bumped whenever a pinned map's layout or meaning changes. The daemon pins
/// under `/sys/fs/bpf/palisade/v<ABI_VERSION>/`, so a new layout never reuses
/// an old map by accident.
pub const ABI_VERSION: u32 = 16;

/// The oldest ABI whose conntrack maps (`PAL_CT4`, `PAL_CT6`: their keys,
/// their values and what each field means) are this one's. A daemon that
/// takes over from such an ABI copies its tracked flows instead of starting
/// empty. Set it to `ABI_VERSION` in the change that alters `Ct4Key`,
/// `Ct6Key` or `CtValue`, or how the datapath reads them; a test in
/// `datapath` pins their layout so that such a change cannot go unnoticed.
pub const CT_LAYOUT_SINCE: u32 = 16;

/// The oldest ABI whose conntrack kept an entry per flow and local end:
/// the key of this one with its end in the first pad byte (0: the `lo`
/// side), the value one `CtEnd`. Up to `CT_LAYOUT_SINCE`, a daemon taking
/// over converts such entries into halves of this one's.
pub const CT_PER_END_SINCE: u32 = 4;

/// The oldest ABI whose fragment table (`PAL_FRAGS`: `FragKey`,
/// `FragValue` and what each field means) is this one's: a daemon that
/// takes over from such an ABI copies the datagrams whose first fragment
/// passed, so that their later fragments still follow it. Set it to
/// `ABI_VERSION` in the change that alters `FragKey` or `FragValue`, or
/// how the datapath fills or reads them (ABI 10 kept `FragKey`'s bytes but
/// made its IPv6 protocol the fragment header's next header); a test in
/// `datapath` pins their layout, which catches only the former.
pub const FRAG_LAYOUT_SINCE: u32 = 10;

#[cfg(feature = "kernel")]
pub mod kernel;
