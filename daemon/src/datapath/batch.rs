//! Whole-map reads in batches (`BPF_MAP_LOOKUP_BATCH`). Iterating a map
//! entry by entry costs two system calls an entry (the next key, then its
//! value); the periodic full pass reads every identity and policy entry,
//! tens of thousands at cluster scale, and that read was nearly all of its
//! time. A batch returns a few thousand entries a call. Kernels or map
//! types without batch lookups answer `EINVAL` or `ENOTSUPP`: the caller
//! then iterates as before ([`Batched::Unsupported`]).

use std::{
    io, mem,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "not supported" (no libc constant: it never
/// reaches user space but from a few syscalls like this one).
const ENOTSUPP: i32 = 524;
/// Entries asked for per call. A hash map's batch is whole buckets, so it
/// must hold the largest bucket (`ENOSPC` otherwise, then retried larger).
const PER_CALL: usize = 4096;
/// Bytes of values a read's buffer holds at most: a map of large values
/// (an LSM pattern set is kilobytes) takes fewer entries a call rather than
/// a buffer of tens of megabytes, zeroed at every read.
const VALUE_BUDGET: usize = 1 << 20;

/// Entries a call for values of `value_len` bytes, within the budget.
fn per_call_for(value_len: usize) -> usize {
    (VALUE_BUDGET / value_len.max(1)).clamp(1, PER_CALL)
}

/// `union bpf_attr`'s member for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
pub struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// `BPF_MAP_LOOKUP_BATCH` with `attr`; `Err` with the kernel's errno
/// (`ENOENT`: the map's end, with `attr.count` entries read before it).
///
/// # Safety
/// `attr` must point at buffers of `attr.count` keys and values of the
/// map's sizes (times the possible CPUs for a per-CPU map) and at batch
/// tokens of the key's size (at least 4 bytes), all alive for the call.
pub unsafe fn lookup_batch(attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the caller's.
    unsafe { crate::loader::syscall::bpf(BPF_MAP_LOOKUP_BATCH, attr) }.map(drop)
}

/// `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (`enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries written a call, at most: the kernel takes any number, but
/// copies of them are made here first.
const PER_WRITE: usize = 4096;

/// How a batched write went.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    All,
    /// This kernel has no batch writes for this map, and none was made:
    /// write entry by entry instead.
    Unsupported,
}

/// Why a batched write stopped: the index of the entry the kernel refused
/// (those before it are written, none after it), and its error.
#[derive(Debug)]
pub struct Refused {
    pub at: usize,
    pub error: io::Error,
}

/// Writes `entries` into `map` (not a per-CPU map) in their order, in one
/// system call where writing entry by entry takes one an entry: a relabel
/// patches hundreds of policy entries, and each call's own cost (this
/// kernel's entry and exit mitigations) was most of a write.
pub fn update_all<K: Pod, V: Pod>(map: &MapData, entries: &[(K, V)]) -> Result<Wrote, Refused> {
    for (n, part) in entries.chunks(PER_WRITE).enumerate() {
        let keys: Vec<K> = part.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = part.iter().map(|(_, v)| *v).collect();
        let mut attr = write_attr(map, keys.as_ptr().cast(), part.len());
        attr.values = values.as_ptr() as u64;
        // SAFETY: `attr` points at `part.len()` keys and values of the
        // map's sizes (`K` and `V` are), alive for the call.
        let result = unsafe { crate::loader::syscall::bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
        match batch_end(result, &attr, part.len(), n == 0) {
            Ok(Wrote::All) => {}
            Ok(Wrote::Unsupported) => return Ok(Wrote::Unsupported),
            Err(Refused { at, error }) => {
                return Err(Refused {
                    at: n * PER_WRITE + at,
                    error,
                });
            }
        }
    }
    Ok(Wrote::All)
}

/// Removes `keys` from `map` in their order, in one system call where it
/// can; a key the map does not hold is passed over.
pub fn delete_all<K: Pod>(map: &MapData, keys: &[K]) -> Result<Wrote, Refused> {
    let mut from = 0;
    while from < keys.len() {
        let left = &keys[from..keys.len().min(from + PER_WRITE)];
        let mut attr = write_attr(map, left.as_ptr().cast(), left.len());
        // SAFETY: `attr` points at `left.len()` keys of the map's size,
        // alive for the call.
        let result = unsafe { crate::loader::syscall::bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        match batch_end(result, &attr, left.len(), from == 0) {
            Err(Refused { at, error }) if error.raw_os_error() == Some(libc::ENOENT) => {
                from += at + 1;
            }
            Err(Refused { at, error }) => {
                return Err(Refused {
                    at: from + at,
                    error,
                });
            }
            Ok(Wrote::Unsupported) => return Ok(Wrote::Unsupported),
            Ok(Wrote::All) => from += left.len(),
        }
    }
    Ok(Wrote::All)
}

fn write_attr(map: &MapData, keys: *const u8, count: usize) -> BatchAttr {
    BatchAttr {
        keys: keys as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    }
}

/// What a batched write's `result` means, `first` for the first call of a
/// write. A kernel or map type without the command answers the first call
/// before it writes anything (`EINVAL` on kernels older than batches,
/// `ENOTSUPP` for map types without them); on a later call that is a
/// refusal like any other, the calls before it having written. Otherwise
/// the kernel reports in `count` how many it wrote before the one it
/// refused; a call it refused whole (a map no process may write) keeps
/// the count it was given, and wrote nothing.
fn batch_end(
    result: io::Result<libc::c_long>,
    attr: &BatchAttr,
    asked: usize,
    first: bool,
) -> Result<Wrote, Refused> {
    match result {
        Ok(_) => Ok(Wrote::All),
        Err(e)
            if first
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                ) =>
        {
            Ok(Wrote::Unsupported)
        }
        Err(error) => Err(Refused {
            at: Some(attr.count as usize)
                .filter(|&written| written < asked)
                .unwrap_or(0),
            error,
        }),
    }
}

/// What a batched read gave.
pub enum Batched<T> {
    Read(T),
    /// This kernel has no batch lookups for this map: iterate instead.
    Unsupported,
}

/// Every entry of `map`, keys `K` and values `V` (the map's own sizes; a
/// per-CPU map is not for this). Entries written or removed during the
/// read may be seen or not, as with iteration.
pub fn read_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Batched<Vec<(K, V)>>> {
    read_all_by(map, per_call_for(mem::size_of::<V>()))
}

/// [`read_all`], asking for `per_call` entries a call (tests take few, to
/// cross many batches).
pub fn read_all_by<K: Pod, V: Pod>(
    map: &MapData,
    per_call: usize,
) -> io::Result<Batched<Vec<(K, V)>>> {
    let (key_len, value_len) = (mem::size_of::<K>(), mem::size_of::<V>());
    let mut out = Vec::new();
    let read = in_batches(
        map.fd().as_fd().as_raw_fd(),
        key_len,
        value_len,
        per_call,
        |keys, values| {
            for (k, v) in keys
                .chunks_exact(key_len)
                .zip(values.chunks_exact(value_len))
            {
                out.push((pod_from(k), pod_from(v)));
            }
        },
    )?;
    Ok(match read {
        Batched::Read(()) => Batched::Read(out),
        Batched::Unsupported => Batched::Unsupported,
    })
}

/// The `T` at the start of `bytes`, as the kernel wrote it. Every caller
/// hands a chunk at least `T`'s size (`chunks_exact` of it or of a larger
/// stride).
fn pod_from<T: Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= mem::size_of::<T>());
    // SAFETY: `bytes` holds at least one `T` (checked above); `Pod` types
    // are plain data, valid for any bytes; the read takes no alignment for
    // granted.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// A CPU's share of a per-CPU value in a batch: the kernel pads each to 8
/// bytes.
fn per_cpu_stride(value_size: usize) -> usize {
    value_size.next_multiple_of(8)
}

/// A per-CPU entry's value bytes in a batch: one stride for every possible
/// CPU.
fn per_cpu_len(value_size: usize) -> io::Result<usize> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize;
    Ok(per_cpu_stride(value_size) * cpus)
}

/// A per-CPU map's entries: each key with its value on every possible CPU.
pub type PerCpuEntries<K, V> = Vec<(K, Vec<V>)>;

/// Every entry of the per-CPU `map` with its value on each possible CPU:
/// one system call a few thousand entries where a lookup by key takes one
/// an entry. The metrics read every counter cell at each scrape (4,096
/// cells, a second's worth of lookups under QEMU's emulation). `K` and `V`
/// must be the map's key and value; a map of other sizes is refused.
pub fn read_all_per_cpu<K: Pod, V: Pod>(map: &MapData) -> io::Result<Batched<PerCpuEntries<K, V>>> {
    let info = map.info().map_err(io::Error::other)?;
    let (key_len, value_size) = (mem::size_of::<K>(), mem::size_of::<V>());
    if info.key_size() as usize != key_len || info.value_size() as usize != value_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map of {}-byte keys and {}-byte values read as {key_len} and {value_size}",
                info.key_size(),
                info.value_size()
            ),
        ));
    }
    let stride = per_cpu_stride(value_size);
    let value_len = per_cpu_len(value_size)?;
    let mut out = Vec::new();
    let read = in_batches(
        map.fd().as_fd().as_raw_fd(),
        key_len,
        value_len,
        per_call_for(value_len),
        |keys, values| {
            for (k, v) in keys
                .chunks_exact(key_len)
                .zip(values.chunks_exact(value_len))
            {
                out.push((pod_from(k), v.chunks_exact(stride).map(pod_from).collect()));
            }
        },
    )?;
    Ok(match read {
        Batched::Read(()) => Batched::Read(out),
        Batched::Unsupported => Batched::Unsupported,
    })
}

/// How many entries the map of `fd` holds, read in batches: one system
/// call a few thousand entries, where a count by `BPF_MAP_GET_NEXT_KEY`
/// takes one an entry (a full conntrack table, 262,144). `key_len` and
/// `value_size` are the map's; `per_cpu` for a per-CPU map, whose values
/// the kernel copies out once for each possible CPU.
pub fn count(
    fd: RawFd,
    key_len: usize,
    value_size: usize,
    per_cpu: bool,
) -> io::Result<Batched<u64>> {
    let value_len = if per_cpu {
        per_cpu_len(value_size)?
    } else {
        value_size
    };
    let mut n = 0u64;
    let read = in_batches(
        fd,
        key_len,
        value_len,
        per_call_for(value_len),
        |keys, _| {
            n += (keys.len() / key_len.max(1)) as u64;
        },
    )?;
    Ok(match read {
        Batched::Read(()) => Batched::Read(n),
        Batched::Unsupported => Batched::Unsupported,
    })
}

/// Reads the map of `fd` in batches of up to `per_call` entries, handing
/// each batch's keys and values (`key_len` and `value_len` bytes an entry)
/// to `each`.
fn in_batches(
    fd: RawFd,
    key_len: usize,
    value_len: usize,
    per_call: usize,
    mut each: impl FnMut(&[u8], &[u8]),
) -> io::Result<Batched<()>> {
    let (key_len, value_len) = (key_len.max(1), value_len.max(1));
    // The position between calls is opaque: a key for most map types, a
    // bucket index for hash maps. Room for either.
    let token_len = key_len.max(8);
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut per_call = per_call.max(1);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut first = true;
    loop {
        keys.resize(per_call * key_len, 0);
        values.resize(per_call * value_len, 0);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: per_call as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `per_call` keys and values
        // of the sizes given and two tokens of `token_len` bytes, all
        // alive for the call.
        let error = unsafe { lookup_batch(&mut attr) }.err();
        let errno = error.as_ref().and_then(io::Error::raw_os_error);
        match errno {
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first => {
                return Ok(Batched::Unsupported);
            }
            // A hash bucket larger than the batch: nothing was read.
            Some(libc::ENOSPC) if per_call < 1 << 20 => {
                per_call *= 4;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(error.unwrap_or_else(|| io::Error::other("batch lookup"))),
        }
        let filled = (attr.count as usize).min(per_call);
        each(&keys[..filled * key_len], &values[..filled * value_len]);
        // ENOENT: the map's end was reached (with this last part read).
        if errno == Some(libc::ENOENT) {
            return Ok(Batched::Read(()));
        }
        mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}
