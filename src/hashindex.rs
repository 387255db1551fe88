//! An index from a key that lives elsewhere (in a transaction, in a call's leg) to the value
//! that finds it there (an id, a call and leg).
//!
//! Entries are `(hash, value)`: the key strings are not copied into the index, nor copied again
//! to look an entry up or remove it, and growing the index moves a few bytes an entry without
//! hashing anything again. A `HashMap<Key, Id>` grew by rehashing every key with SipHash: ~8 %
//! of the samples while 10^5 transactions lingered (bench/PROFILE.md, sixth pass). The keys come
//! from the network (branches, tags), so they are hashed with a random SipHash key; `find`
//! confirms a candidate against the whole key where it lives.

use std::hash::{BuildHasher, Hash, RandomState};

pub struct HashIndex<V> {
    table: hashbrown::HashTable<(u64, V)>,
    state: RandomState,
}

impl<V> Default for HashIndex<V> {
    fn default() -> Self {
        HashIndex { table: hashbrown::HashTable::new(), state: RandomState::new() }
    }
}

impl<V: Copy + PartialEq> HashIndex<V> {
    /// The value indexed under `key` for which `is` confirms the key (`is` looks at the key
    /// where it lives).
    pub fn find<K: Hash + ?Sized>(&self, key: &K, mut is: impl FnMut(V) -> bool) -> Option<V> {
        let h = self.state.hash_one(key);
        self.table.find(h, |&(eh, v)| eh == h && is(v)).map(|&(_, v)| v)
    }

    pub fn insert<K: Hash + ?Sized>(&mut self, key: &K, v: V) {
        let h = self.state.hash_one(key);
        self.table.insert_unique(h, (h, v), |&(eh, _)| eh);
    }

    /// Removes the entry of `v` under `key`.
    pub fn remove<K: Hash + ?Sized>(&mut self, key: &K, v: V) {
        let h = self.state.hash_one(key);
        if let Ok(e) = self.table.find_entry(h, |&(_, x)| x == v) {
            e.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HashIndex;

    /// Two keys, the same value twice under different keys: find confirms through `is`, remove
    /// takes only the entry of that key and value.
    #[test]
    fn find_insert_remove() {
        let keys = ["z9hG4bK1", "z9hG4bK2"];
        let mut ix = HashIndex::default();
        ix.insert(keys[0], 0usize);
        ix.insert(keys[1], 1usize);
        assert_eq!(ix.find("z9hG4bK1", |v| keys[v] == "z9hG4bK1"), Some(0));
        assert_eq!(ix.find("z9hG4bK2", |v| keys[v] == "z9hG4bK2"), Some(1));
        assert_eq!(ix.find("z9hG4bK1", |_| false), None, "a candidate `is` refuses is no match");
        assert_eq!(ix.find("other", |_| true), None);
        ix.remove(keys[0], 1);
        assert_eq!(ix.find("z9hG4bK1", |v| keys[v] == "z9hG4bK1"), Some(0), "wrong value: nothing removed");
        ix.remove(keys[0], 0);
        assert_eq!(ix.find("z9hG4bK1", |_| true), None);
        assert_eq!(ix.find("z9hG4bK2", |v| keys[v] == "z9hG4bK2"), Some(1));
    }
}
