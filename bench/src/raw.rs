//! The harness floor: an empty program of each type, loaded and run through
//! raw bpf(2) calls, so the figures for Palisade's programs have something
//! to be divided by.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_RAW_TRACEPOINT_OPEN: i64 = 17;
const BPF_LINK_CREATE: i64 = 28;
const BPF_TCX_INGRESS: u64 = 46;
const BPF_TCX_EGRESS: u64 = 47;
/// `TC_ACT_UNSPEC` (`TCX_NEXT`): what a TC program returns to leave the
/// packet to the next program, and past the last to pass it on.
pub const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_SHOT`: what a TC program returns to drop the packet.
pub const TC_ACT_SHOT: i32 = 2;
pub const SCHED_CLS: u32 = 3;
pub const XDP: u32 = 6;
const LSM: u32 = 29;
const BPF_LSM_MAC: u32 = 27;

pub fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded, 128-byte bpf_attr the kernel reads
    // (and for TEST_RUN writes back into) for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads `r0 = ret; exit` as a program of `prog_type`.
pub fn empty_program(prog_type: u32, ret: i32) -> io::Result<OwnedFd> {
    // BPF_ALU64|BPF_MOV|BPF_K r0, imm ; BPF_JMP|BPF_EXIT
    load_program(prog_type, &[0xb7 | (u64::from(ret as u32) << 32), 0x95])
}

/// Loads a TC program that hands every packet to the peer of `ifindex`'s
/// veth, in that peer's namespace (`bpf_redirect_peer`), as if it had
/// arrived there: the packet skips the bridge and `ifindex`'s transmit side.
/// Its frames are addressed to the receiver's MAC, so the sender's host end
/// took them for another host's; they are marked as the receiver's own
/// first (`bpf_skb_change_type`, `PACKET_HOST`): kernels whose redirect does
/// not reset the packet type would have the receiver's IP layer drop them,
/// and on those that do the mark costs one helper call.
pub fn redirect_peer_program(ifindex: u32) -> io::Result<OwnedFd> {
    const CHANGE_TYPE: u64 = 32;
    const REDIRECT_PEER: u64 = 155;
    let call = |helper: u64| 0x85 | helper << 32;
    load_program(
        SCHED_CLS,
        &[
            0x02b7,                            // r2 = PACKET_HOST (r1: the packet)
            call(CHANGE_TYPE),                 //
            0x01b7 | u64::from(ifindex) << 32, // r1 = ifindex
            0x02b7,                            // r2 = 0 (flags)
            call(REDIRECT_PEER),               // r0 = TC_ACT_REDIRECT
            0x95,                              // exit
        ],
    )
}

/// Attaches a TC program to the ingress of `ifindex` (in the calling
/// thread's network namespace) through TCX; detached when the returned
/// link is closed.
pub fn tcx_attach(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    tcx_link(prog, ifindex, BPF_TCX_INGRESS)
}

/// As [`tcx_attach`], to the egress of `ifindex`.
pub fn tcx_attach_egress(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    tcx_link(prog, ifindex, BPF_TCX_EGRESS)
}

fn tcx_link(prog: BorrowedFd<'_>, ifindex: u32, attach_type: u64) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // prog_fd | target_ifindex, attach_type | flags
    attr[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32);
    attr[1] = attach_type;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads hand-assembled instructions as a program of `prog_type`.
pub fn load_program(prog_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(prog_type) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// An empty LSM program (`return 0`, allowing everything) attached to the
/// hook whose `bpf_lsm_<hook>` function has BTF id `btf_id`: the floor of
/// any LSM program there (the trampoline the kernel runs). Detached when
/// the returned link is closed.
pub fn empty_lsm(btf_id: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let license = c"GPL";
    let insns: [u64; 2] = [0xb7, 0x95];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(LSM) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // expected_attach_type (offset 68), attach_btf_id (offset 108).
    attr[8] = u64::from(BPF_LSM_MAC) << 32;
    attr[13] = u64::from(btf_id) << 32;
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor we now own.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u64; 16];
    // name (NULL: the program's own attach point), prog_fd.
    attr[1] = prog.as_raw_fd() as u64;
    let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)?;
    // SAFETY: as above, a link's descriptor.
    Ok((prog, unsafe { OwnedFd::from_raw_fd(link as i32) }))
}

/// Runs `prog` `repeat` times on `frame`; the kernel's average ns per run.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<u32> {
    let mut attr = [0u64; 16];
    // prog_fd, retval | data_size_in, data_size_out | data_in | data_out | repeat, duration
    attr[0] = prog.as_raw_fd() as u64;
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr[4] >> 32) as u32)
}
