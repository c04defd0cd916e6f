//! Port ranges as trie prefixes.
//!
//! The policy trie matches the destination port bit by bit, so a range
//! (`port`..=`endPort`) is written as the few power-of-two aligned blocks
//! that tile it exactly: at most 30 for the widest range.

/// One aligned block: `base` with its top `bits` bits significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPrefix {
    pub base: u16,
    pub bits: u8,
}

impl PortPrefix {
    pub fn first(&self) -> u16 {
        self.base
    }

    pub fn last(&self) -> u16 {
        let span = 1u32 << (16 - u32::from(self.bits));
        (u32::from(self.base) + span - 1) as u16
    }
}

/// The aligned blocks covering exactly `first..=last`, in ascending order.
/// An empty range (`first > last`) has none.
pub fn prefixes(first: u16, last: u16) -> Vec<PortPrefix> {
    Prefixes::new(first, last).collect()
}

/// [`prefixes`] one at a time: the syncer expands every entry of every
/// endpoint it compares, and most are one port.
pub struct Prefixes {
    lo: u32,
    hi: u32,
}

impl Prefixes {
    pub fn new(first: u16, last: u16) -> Self {
        Self {
            lo: u32::from(first),
            hi: u32::from(last),
        }
    }
}

impl Iterator for Prefixes {
    type Item = PortPrefix;

    fn next(&mut self) -> Option<PortPrefix> {
        let (lo, hi) = (self.lo, self.hi);
        if lo > hi {
            return None;
        }
        // The largest block that starts at `lo` (alignment) and ends <= `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        self.lo = lo + size;
        Some(PortPrefix {
            base: lo as u16,
            bits: (16 - size.trailing_zeros()) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(p: &[PortPrefix]) -> Vec<u16> {
        p.iter().flat_map(|b| b.first()..=b.last()).collect()
    }

    #[test]
    fn a_single_port_is_one_full_prefix() {
        assert_eq!(prefixes(80, 80), [PortPrefix { base: 80, bits: 16 }]);
    }

    #[test]
    fn all_ports_is_the_empty_prefix() {
        assert_eq!(prefixes(0, 65535), [PortPrefix { base: 0, bits: 0 }]);
    }

    #[test]
    fn ranges_are_tiled_exactly_and_minimally() {
        for (a, b) in [
            (1, 65535),
            (8000, 8099),
            (1024, 65535),
            (7, 9),
            (32000, 32768),
            (0, 0),
        ] {
            let p = prefixes(a, b);
            assert_eq!(covered(&p), (a..=b).collect::<Vec<_>>(), "{a}..={b}");
            assert!(p.len() <= 30, "{a}..={b}: {}", p.len());
            for block in &p {
                let span = 1u32 << (16 - u32::from(block.bits));
                assert_eq!(u32::from(block.base) % span, 0, "unaligned {block:?}");
            }
        }
        assert!(prefixes(10, 9).is_empty());
    }
}
