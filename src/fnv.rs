//! FNV-1a (64 bit): a fast non-cryptographic hash for short keys and change detection, where
//! SipHash's per-write cost showed in the profile. Not for maps keyed by network input (no
//! protection against chosen collisions): use the std hasher there.

/// FNV-1a as a `std::hash::Hasher`.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The FNV-1a hash of some bytes.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    std::hash::Hasher::write(&mut h, bytes);
    h.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // the reference vectors of the FNV specification (draft-eastlake-fnv)
        assert_eq!(super::hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
