//! W-TinyLFU: the admission and eviction policy of the in-process tier (one shard of it;
//! `memory.rs` shards and locks).
//!
//! New entries land in a small LRU *window* (1% of capacity) so that bursts of fresh keys
//! are kept briefly. An entry leaving the window competes for a place in the *main* region
//! against main's eviction victim, and wins only if it has been seen more often, judged by
//! a count-min sketch of recent key frequencies behind a one-bit *doorkeeper* (which keeps
//! one-hit wonders out of the sketch). Main is a segmented LRU: *probation* (20%) and
//! *protected* (80%); a hit in probation promotes. So a scan of one-off keys (a flood of
//! garbage tokens, a batch job reading every user) cannot flush the hot set, which a plain
//! LRU would. The sketch ages by halving every counter after `10 × capacity` recordings,
//! so yesterday's hot keys do not stay privileged forever.
//!
//! Bounded both by entry count and by bytes (key + value + a fixed per-entry overhead).
//! Entries expire at their own deadline, checked on access; expired entries are also the
//! first evicted.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};

use hashbrown::HashTable;
use tokio::time::Instant;

/// Bookkeeping bytes charged per entry on top of key and value (node, table slot, Arc).
pub const ENTRY_OVERHEAD: usize = 96;

/// Node index; `u32` keeps nodes and table slots small (a shard never holds 4 billion).
type Index = u32;
const NIL: Index = Index::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Window,
    Probation,
    Protected,
}

struct Node {
    key: Box<str>,
    value: Arc<[u8]>,
    /// Charged bytes; a value can't outweigh a shard's byte limit, itself a `usize`
    /// split 16 ways, and entries over 4 GiB are refused.
    weight: u32,
    region: Region,
    expires: Instant,
    hash: u64,
    prev: Index,
    next: Index,
}

/// An intrusive doubly-linked LRU list over the node slab; head is most recent.
#[derive(Clone, Copy, Default)]
struct List {
    head: Index,
    tail: Index,
    len: usize,
    weight: usize,
}

impl List {
    fn new() -> Self {
        List { head: NIL, tail: NIL, len: 0, weight: 0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub entries: usize,
    pub bytes: usize,
}

impl Limits {
    fn fits(&self, entries: usize, bytes: usize) -> bool {
        entries <= self.entries && bytes <= self.bytes
    }
}

pub struct TinyLfu {
    /// Node indices, placed by the node's `hash` ([`hash_key`]): computed once per call for
    /// shard, sketch and table alike, and 4 bytes a slot instead of a key and an index.
    map: HashTable<Index>,
    nodes: Vec<Node>,
    free: Vec<Index>,
    window: List,
    probation: List,
    protected: List,
    total: Limits,
    window_limit: Limits,
    main_limit: Limits,
    protected_limit: Limits,
    sketch: Sketch,
}

impl TinyLfu {
    pub fn new(limits: Limits) -> Self {
        // Node numbers are `Index`es, `NIL` excluded.
        let entries = limits.entries.clamp(1, NIL as usize - 1);
        let bytes = limits.bytes.max(ENTRY_OVERHEAD + 1);
        let window = Limits { entries: (entries / 100).max(1), bytes: (bytes / 100).max(1) };
        let main = Limits { entries: entries - window.entries, bytes: bytes - window.bytes };
        let protected = Limits { entries: main.entries / 5 * 4 + main.entries % 5 * 4 / 5, bytes: main.bytes / 5 * 4 };
        TinyLfu {
            map: HashTable::with_capacity(entries.min(1 << 16)),
            nodes: Vec::new(),
            free: Vec::new(),
            window: List::new(),
            probation: List::new(),
            protected: List::new(),
            total: Limits { entries, bytes },
            window_limit: window,
            main_limit: main,
            protected_limit: protected,
            sketch: Sketch::new(entries),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged for the live entries.
    pub fn weight(&self) -> usize {
        self.window.weight + self.probation.weight + self.protected.weight
    }

    pub fn limits(&self) -> Limits {
        self.total
    }

    /// The node holding `key`, whose [`hash_key`] is `hash`.
    fn find(&self, key: &str, hash: u64) -> Option<Index> {
        self.map.find(hash, |&i| *self.nodes[i as usize].key == *key).copied()
    }

    fn node(&self, index: Index) -> &Node {
        &self.nodes[index as usize]
    }

    fn node_mut(&mut self, index: Index) -> &mut Node {
        &mut self.nodes[index as usize]
    }

    #[cfg(test)]
    fn contains(&self, key: &str, now: Instant) -> bool {
        self.find(key, hash_key(key)).is_some_and(|i| self.node(i).expires > now)
    }

    /// A hit refreshes recency (and promotes from probation); every lookup, hit or miss,
    /// counts towards the key's frequency.
    pub fn get(&mut self, key: &str, hash: u64, now: Instant) -> Option<Arc<[u8]>> {
        self.sketch.record(hash);
        let index = self.find(key, hash)?;
        if self.node(index).expires <= now {
            self.remove_index(index);
            return None;
        }
        match self.node(index).region {
            Region::Window => {
                self.unlink(index);
                self.push_front(index, Region::Window);
            }
            Region::Probation => {
                self.unlink(index);
                self.push_front(index, Region::Protected);
                // The protected segment overflows into probation, not out of the cache.
                while !self.protected_limit.fits(self.protected.len, self.protected.weight)
                    && self.protected.tail != NIL
                {
                    let demoted = self.protected.tail;
                    self.unlink(demoted);
                    self.push_front(demoted, Region::Probation);
                }
            }
            Region::Protected => {
                self.unlink(index);
                self.push_front(index, Region::Protected);
            }
        }
        Some(self.node(index).value.clone())
    }

    /// Inserts unless a live entry exists (`false` then). An entry heavier than the whole
    /// cache is refused.
    pub fn insert_if_absent(&mut self, key: &str, hash: u64, value: Arc<[u8]>, expires: Instant, now: Instant) -> bool {
        if let Some(index) = self.find(key, hash) {
            if self.node(index).expires > now {
                return false;
            }
            self.remove_index(index);
        }
        let weight = key.len() + value.len() + ENTRY_OVERHEAD;
        let Ok(weight) = u32::try_from(weight) else { return false };
        if weight as usize > self.total.bytes {
            return false;
        }
        let node = Node { key: key.into(), value, weight, region: Region::Window, expires, hash, prev: NIL, next: NIL };
        let index = match self.free.pop() {
            Some(i) => {
                *self.node_mut(i) = node;
                i
            }
            None => {
                // At most `entries` (< `NIL`) nodes are live, and freed ones are reused.
                self.nodes.push(node);
                (self.nodes.len() - 1) as Index
            }
        };
        let nodes = &self.nodes;
        self.map.insert_unique(hash, index, |&i| nodes[i as usize].hash);
        self.push_front(index, Region::Window);
        while !self.window_limit.fits(self.window.len, self.window.weight) && self.window.tail != NIL {
            let candidate = self.window.tail;
            self.unlink(candidate);
            self.admit(candidate, now);
        }
        true
    }

    /// A window leaver enters main if there is room, or if it is more frequent than the
    /// victim it would replace; otherwise it is the one evicted.
    fn admit(&mut self, candidate: Index, now: Instant) {
        let weight = self.node(candidate).weight as usize;
        let candidate_frequency = self.sketch.estimate(self.node(candidate).hash);
        loop {
            let main_len = self.probation.len + self.protected.len + 1;
            let main_weight = self.probation.weight + self.protected.weight + weight;
            if self.main_limit.fits(main_len, main_weight) {
                self.push_front(candidate, Region::Probation);
                return;
            }
            let victim = if self.probation.tail != NIL { self.probation.tail } else { self.protected.tail };
            if victim == NIL {
                self.free_index(candidate);
                return;
            }
            let expired = self.node(victim).expires <= now;
            if expired || candidate_frequency > self.sketch.estimate(self.node(victim).hash) {
                self.remove_index(victim);
            } else {
                self.free_index(candidate);
                return;
            }
        }
    }

    pub fn remove(&mut self, key: &str, hash: u64) -> bool {
        match self.find(key, hash) {
            Some(index) => {
                self.remove_index(index);
                true
            }
            None => false,
        }
    }

    /// Drops every entry; the frequency sketch stays (it describes traffic, not values).
    pub fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.free.clear();
        self.window = List::new();
        self.probation = List::new();
        self.protected = List::new();
    }

    fn remove_index(&mut self, index: Index) {
        self.unlink(index);
        self.free_index(index);
    }

    /// Frees an unlinked node.
    fn free_index(&mut self, index: Index) {
        let hash = self.node(index).hash;
        if let Ok(slot) = self.map.find_entry(hash, |&i| i == index) {
            slot.remove();
        }
        // Drop key and value now rather than when the slot is reused.
        let node = self.node_mut(index);
        node.key = Box::default();
        node.value = Arc::from(&[][..]);
        self.free.push(index);
    }

    fn list(&mut self, region: Region) -> &mut List {
        match region {
            Region::Window => &mut self.window,
            Region::Probation => &mut self.probation,
            Region::Protected => &mut self.protected,
        }
    }

    fn push_front(&mut self, index: Index, region: Region) {
        let weight = self.node(index).weight as usize;
        let list = self.list(region);
        let old_head = list.head;
        list.head = index;
        if list.tail == NIL {
            list.tail = index;
        }
        list.len += 1;
        list.weight += weight;
        if old_head != NIL {
            self.node_mut(old_head).prev = index;
        }
        let node = self.node_mut(index);
        node.region = region;
        node.prev = NIL;
        node.next = old_head;
    }

    fn unlink(&mut self, index: Index) {
        let (prev, next, region, weight) = {
            let n = self.node(index);
            (n.prev, n.next, n.region, n.weight as usize)
        };
        if prev != NIL {
            self.node_mut(prev).next = next;
        }
        if next != NIL {
            self.node_mut(next).prev = prev;
        }
        let list = self.list(region);
        if list.head == index {
            list.head = next;
        }
        if list.tail == index {
            list.tail = prev;
        }
        list.len -= 1;
        list.weight -= weight;
        let node = self.node_mut(index);
        node.prev = NIL;
        node.next = NIL;
    }

    /// Internal consistency, for property tests: every list is well linked, lengths and
    /// weights add up, and the map points at exactly the linked nodes.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut seen = 0;
        for (region, list) in
            [(Region::Window, &self.window), (Region::Probation, &self.probation), (Region::Protected, &self.protected)]
        {
            let (mut len, mut weight, mut prev, mut at) = (0, 0, NIL, list.head);
            while at != NIL {
                let n = self.node(at);
                assert_eq!(n.region, region);
                assert_eq!(n.prev, prev);
                assert_eq!(self.find(&n.key, n.hash), Some(at));
                assert_eq!(n.hash, hash_key(&n.key));
                len += 1;
                weight += n.weight as usize;
                prev = at;
                at = n.next;
            }
            assert_eq!(list.tail, prev);
            assert_eq!((list.len, list.weight), (len, weight));
            seen += len;
        }
        assert_eq!(seen, self.map.len());
        assert!(self.total.fits(self.map.len(), self.weight()), "over capacity");
    }
}

/// Count-min sketch with 4-bit-range counters (saturating at 15) and a doorkeeper bitmap.
struct Sketch {
    counters: Vec<u8>,
    mask: usize,
    doorkeeper: Vec<u64>,
    door_mask: usize,
    additions: usize,
    sample: usize,
}

const ROWS: usize = 4;
const SEEDS: [u64; ROWS] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F, 0x1656_67B1_9E37_79F9, 0x27D4_EB2F_1656_67C5];

impl Sketch {
    fn new(capacity: usize) -> Self {
        let width = capacity.max(16).next_power_of_two();
        let door_bits = (capacity * 8).max(64).next_power_of_two();
        Sketch {
            counters: vec![0; width * ROWS],
            mask: width - 1,
            doorkeeper: vec![0; door_bits / 64],
            door_mask: door_bits - 1,
            additions: 0,
            sample: capacity.max(16) * 10,
        }
    }

    fn slot(&self, hash: u64, row: usize) -> usize {
        let h = (hash ^ SEEDS[row]).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        row * (self.mask + 1) + ((h >> 32) as usize & self.mask)
    }

    fn door_bits(&self, hash: u64) -> [usize; 2] {
        [(hash as usize) & self.door_mask, ((hash >> 32) as usize).rotate_left(7) & self.door_mask]
    }

    fn door_contains(&self, hash: u64) -> bool {
        self.door_bits(hash).iter().all(|&b| self.doorkeeper[b / 64] & (1 << (b % 64)) != 0)
    }

    fn record(&mut self, hash: u64) {
        if !self.door_contains(hash) {
            for b in self.door_bits(hash) {
                self.doorkeeper[b / 64] |= 1 << (b % 64);
            }
        } else {
            for row in 0..ROWS {
                let s = self.slot(hash, row);
                if self.counters[s] < 15 {
                    self.counters[s] += 1;
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.age();
        }
    }

    fn estimate(&self, hash: u64) -> u8 {
        let min = (0..ROWS).map(|row| self.counters[self.slot(hash, row)]).min().unwrap_or(0);
        min + u8::from(self.door_contains(hash))
    }

    fn age(&mut self) {
        for c in &mut self.counters {
            *c /= 2;
        }
        self.doorkeeper.iter_mut().for_each(|w| *w = 0);
        self.additions /= 2;
    }
}

/// The hash that picks a key's shard, sketch counters and table slot: SipHash-1-3 under a
/// key drawn at process start, so clients choosing tokens cannot aim their cache keys at
/// one slot or shard (keys hold token digests, but digests can be ground for a few bits).
/// One hash per call; the table before it hashed the key a second time.
pub fn hash_key(key: &str) -> u64 {
    static KEYS: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);
    KEYS.hash_one(key)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    /// xorshift64*: deterministic random operation sequences without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn insert(c: &mut TinyLfu, key: &str, value: &[u8], now: Instant) -> bool {
        c.insert_if_absent(key, hash_key(key), Arc::from(value), now + Duration::from_secs(3600), now)
    }

    fn get(c: &mut TinyLfu, key: &str, now: Instant) -> Option<Vec<u8>> {
        c.get(key, hash_key(key), now).map(|v| v.to_vec())
    }

    /// Property: under any sequence of operations, a read returns nothing or exactly the
    /// value the model holds (never a removed or replaced one), capacity in entries and
    /// bytes is never exceeded, and the internal lists stay consistent.
    #[test]
    fn random_operations_agree_with_a_model() {
        let now = Instant::now();
        for seed in 1..=60u64 {
            let mut rng = Rng(seed * 0x9E37_79B9);
            let limits = Limits { entries: 1 + rng.below(200) as usize, bytes: 200 + rng.below(40_000) as usize };
            let mut cache = TinyLfu::new(limits);
            let mut model: HashMap<String, Vec<u8>> = HashMap::new();
            let keys = 1 + rng.below(400);
            for step in 0..3000 {
                let key = format!("k{}", rng.below(keys));
                match rng.below(10) {
                    0..=4 => {
                        let got = get(&mut cache, &key, now);
                        if let Some(v) = &got {
                            assert_eq!(Some(v), model.get(&key), "seed {seed} step {step}: wrong value for {key}");
                        }
                    }
                    5..=7 => {
                        let value: Vec<u8> = (0..rng.below(300)).map(|i| (i as u8) ^ (step as u8)).collect();
                        // A value is only stored when absent, so the model only learns it then.
                        if !cache.contains(&key, now) && insert(&mut cache, &key, &value, now) {
                            model.insert(key, value);
                        }
                    }
                    8 => {
                        cache.remove(&key, hash_key(&key));
                        model.remove(&key);
                    }
                    _ => {
                        if rng.below(50) == 0 {
                            cache.clear();
                            model.clear();
                        }
                    }
                }
                assert!(cache.len() <= limits.entries, "seed {seed}: {} entries > {}", cache.len(), limits.entries);
                assert!(cache.weight() <= limits.bytes.max(ENTRY_OVERHEAD + 1), "seed {seed}: over byte limit");
            }
            cache.check_invariants();
        }
    }

    /// Property: a frequently read working set survives a scan of one-off keys many times
    /// the cache's size — the reason for TinyLFU over LRU.
    #[test]
    fn hot_keys_survive_a_scan() {
        let now = Instant::now();
        let mut cache = TinyLfu::new(Limits { entries: 1000, bytes: usize::MAX / 2 });
        let hot: Vec<String> = (0..500).map(|i| format!("hot{i}")).collect();
        for _ in 0..5 {
            for k in &hot {
                if get(&mut cache, k, now).is_none() {
                    insert(&mut cache, k, b"v", now);
                }
            }
        }
        for i in 0..20_000 {
            let k = format!("scan{i}");
            if get(&mut cache, &k, now).is_none() {
                insert(&mut cache, &k, b"v", now);
            }
        }
        let survivors = hot.iter().filter(|k| cache.contains(k, now)).count();
        assert!(survivors >= 450, "only {survivors} of 500 hot keys survived the scan");
        cache.check_invariants();
    }

    #[test]
    fn entries_expire_and_are_not_returned() {
        let now = Instant::now();
        let mut cache = TinyLfu::new(Limits { entries: 10, bytes: 10_000 });
        assert!(cache.insert_if_absent("a", hash_key("a"), Arc::from(&b"1"[..]), now + Duration::from_secs(1), now));
        assert!(!cache.insert_if_absent("a", hash_key("a"), Arc::from(&b"2"[..]), now + Duration::from_secs(1), now));
        let later = now + Duration::from_secs(2);
        assert_eq!(get(&mut cache, "a", later), None);
        // Once expired, the key may be filled again.
        assert!(insert(&mut cache, "a", b"3", later));
        assert_eq!(get(&mut cache, "a", later), Some(b"3".to_vec()));
        cache.check_invariants();
    }

    #[test]
    fn too_heavy_values_are_refused() {
        let now = Instant::now();
        let mut cache = TinyLfu::new(Limits { entries: 10, bytes: 1000 });
        assert!(!insert(&mut cache, "big", &[0; 2000], now));
        assert!(cache.is_empty());
    }

    /// Property: the sketch never underestimates a count below its saturation point
    /// (before aging), whatever else was recorded.
    #[test]
    fn sketch_never_underestimates() {
        let mut rng = Rng(7);
        let mut sketch = Sketch::new(10_000);
        let mut truth: HashMap<u64, u32> = HashMap::new();
        for _ in 0..20_000 {
            let h = hash_key(&format!("k{}", rng.below(3000)));
            sketch.record(h);
            *truth.entry(h).or_default() += 1;
        }
        for (h, count) in truth {
            assert!(u32::from(sketch.estimate(h)) >= count.min(15), "estimate below true count {count}");
        }
    }
}
