//! The hasher of the sequential stage's maps (swarm state, audit), whose
//! keys are mostly 20-byte info hashes and peer ids with addresses.
//!
//! It is foldhash's fast hasher (per-process random seed) with one change:
//! a 20-byte write is taken as one 128-bit and one 32-bit number instead of
//! going through foldhash's long-input path (an out-of-line call with a
//! length-dependent loop set-up). foldhash mixes a 128-bit number with one
//! seeded folded multiply and gathers small numbers until 128 bits are
//! full, so every byte of the key still goes through the seeded mixing.
//! Each key's hash changes, nothing else: no output depends on a map's
//! order (the seed is random per process already). On bulk-250m a 20-byte
//! key took ~44 instructions to hash this way through foldhash's slice
//! path, ~280 k times on the stage's thread.

use std::hash::{BuildHasher, Hasher};

/// The stage's map: hashbrown's table under [`KeyState`]. The same map
/// type for the swarm, the audit and the DHT aggregate, so that a lookup's
/// code is one instantiation the compiler inlines alike in each (std's
/// `HashMap` wraps the same table, but its lookups were inlined or not
/// depending on which code-generation unit an unrelated edit moved them
/// to: session 14's dworker measured +4.75 M on bulk-250m's stage from
/// that alone).
pub type Map<K, V> = hashbrown::HashMap<K, V, KeyState>;

/// The entry of a [`Map`].
pub use hashbrown::hash_map::Entry;

/// [`BuildHasher`] of [`KeyHasher`]: foldhash's random state.
#[derive(Clone, Debug, Default)]
pub struct KeyState(foldhash::fast::RandomState);

impl BuildHasher for KeyState {
    type Hasher = KeyHasher;

    #[inline(always)]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0.build_hasher())
    }
}

/// foldhash's fast hasher, 20-byte writes as two numbers.
pub struct KeyHasher(foldhash::fast::FoldHasher<'static>);

impl Hasher for KeyHasher {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) {
        if let Some((head, tail)) = bytes.split_first_chunk::<16>() {
            if let Ok(tail) = <[u8; 4]>::try_from(tail) {
                self.0.write_u128(u128::from_le_bytes(*head));
                self.0.write_u32(u32::from_le_bytes(tail));
                return;
            }
        }
        self.0.write(bytes);
    }

    #[inline(always)]
    fn write_u8(&mut self, i: u8) {
        self.0.write_u8(i);
    }

    #[inline(always)]
    fn write_u16(&mut self, i: u16) {
        self.0.write_u16(i);
    }

    #[inline(always)]
    fn write_u32(&mut self, i: u32) {
        self.0.write_u32(i);
    }

    #[inline(always)]
    fn write_u64(&mut self, i: u64) {
        self.0.write_u64(i);
    }

    #[inline(always)]
    fn write_u128(&mut self, i: u128) {
        self.0.write_u128(i);
    }

    #[inline(always)]
    fn write_usize(&mut self, i: usize) {
        self.0.write_usize(i);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(s: &KeyState, k: &impl std::hash::Hash) -> u64 {
        s.hash_one(k)
    }

    /// Every byte of a 20-byte key and of the address beside it moves the
    /// hash (a byte left out of the mixing would collide keys that differ
    /// only there), and other lengths still hash as foldhash does.
    #[test]
    fn every_byte_of_a_key_moves_its_hash() {
        let s = KeyState::default();
        let base: ([u8; 20], std::net::SocketAddr) = ([7; 20], "10.0.0.1:6881".parse().unwrap());
        let h0 = hash_of(&s, &base);
        assert_eq!(h0, hash_of(&s, &base));
        let mut seen = std::collections::HashSet::new();
        seen.insert(h0);
        for i in 0..20 {
            for bit in [0x01u8, 0x80] {
                let mut k = base;
                k.0[i] ^= bit;
                assert!(seen.insert(hash_of(&s, &k)), "byte {i} bit {bit:#x}");
            }
        }
        let mut k = base;
        k.1.set_port(6882);
        assert!(seen.insert(hash_of(&s, &k)));
        let mut k = base;
        k.1.set_ip("10.0.0.2".parse().unwrap());
        assert!(seen.insert(hash_of(&s, &k)));
        // 43 distinct hashes; other lengths take foldhash's own path.
        assert_eq!(seen.len(), 43);
        assert_ne!(hash_of(&s, &[1u8; 19]), hash_of(&s, &[2u8; 19]));
        assert_ne!(hash_of(&s, &"a".to_string()), hash_of(&s, &"b".to_string()));
    }
}
