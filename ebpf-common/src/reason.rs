//! Reason codes for counters and events.
//!
//! Append-only: a code is never renumbered or reused, because pinned counter
//! maps and dashboards outlive any one daemon version.

/// The packet or operation passed because no policy governs this hook yet.
pub const PASS_UNENFORCED: u32 = 0;

/// One past the highest code in use; counter arrays are sized from it.
pub const COUNT: u32 = 1;

/// A stable name for each code, as exported in metrics and `palisade status`.
pub const fn name(code: u32) -> &'static str {
    match code {
        PASS_UNENFORCED => "pass_unenforced",
        _ => "unknown",
    }
}
