//! The raw `bpf(2)` call, for the commands aya 0.16 does not offer the way
//! Palisade needs them (on a borrowed descriptor from another thread, in
//! batches, or for fields its info types leave out).

use std::io;

/// `bpf(cmd, attr, size_of(attr))`: the kernel's non-negative return (a
/// new descriptor for the commands that make one), or its errno.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` reads, and every
/// pointer in it must point at memory of the sizes it gives, alive for the
/// call.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller's; the size passed is the attr's own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
