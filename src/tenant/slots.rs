//! Organisation ids as small dense numbers, and state kept per organisation by that number.
//!
//! Every [`OrgId`](super::OrgId) is interned when it is made: the same text gets the same
//! slot for the life of the process. State that outlives registry swaps (rate buckets,
//! month counts, daily aggregates) lives in a [`PerOrg`] table indexed by the slot, so a
//! request reaches its organisation's state with one array index: no hashing, no string
//! comparison and no shard lock on the per-request path, whatever the number of tenants.
//!
//! Slots are never reused. The table holds every id the registry has ever held (ids
//! come from the tenants file, the control plane and saved quota counts, never from a
//! request), so it is bounded by the number of organisations the operator has.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// The ids seen so far: text → slot, and slot → text.
#[derive(Default)]
struct Interner {
    by_text: HashMap<Arc<str>, u32, ahash::RandomState>,
    texts: Vec<Arc<str>>,
}

static IDS: LazyLock<Mutex<Interner>> = LazyLock::new(Default::default);

fn interner() -> std::sync::MutexGuard<'static, Interner> {
    // The interner's state is valid after any panic (a push or an insert either happened or not).
    IDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot of `text`, assigning the next one if it is new.
pub(super) fn intern(text: &str) -> (Arc<str>, u32) {
    let mut ids = interner();
    if let Some((text, &slot)) = ids.by_text.get_key_value(text) {
        return (text.clone(), slot);
    }
    // 2^32 - 1 ids would take hundreds of gigabytes of registry first.
    let slot = u32::try_from(ids.texts.len()).ok().filter(|&s| s < u32::MAX).expect("organisation id slots exhausted");
    let text: Arc<str> = Arc::from(text);
    ids.texts.push(text.clone());
    ids.by_text.insert(text.clone(), slot);
    (text, slot)
}

/// The text of an interned slot.
pub(super) fn text_of(slot: u32) -> Option<Arc<str>> {
    interner().texts.get(slot as usize).cloned()
}

/// Buckets of growing size: bucket `k` holds `2^k` entries, slots `2^k - 1 ..= 2^(k+1) - 2`.
const BUCKETS: usize = 32;

/// One `T` per organisation slot, created (as `T::default()`) the first time any slot of its
/// bucket is reached. Reads are one atomic load of the bucket pointer and an index; buckets
/// double in size, so ten thousand organisations take fourteen allocations, and nothing moves
/// once allocated (references stay valid for the table's life).
pub struct PerOrg<T> {
    buckets: [AtomicPtr<T>; BUCKETS],
    owns: PhantomData<Box<[T]>>,
}

// The table hands out `&T` to any thread and drops the `T`s it owns.
unsafe impl<T: Send + Sync> Sync for PerOrg<T> {}
unsafe impl<T: Send> Send for PerOrg<T> {}

impl<T: Default> Default for PerOrg<T> {
    fn default() -> Self {
        PerOrg { buckets: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())), owns: PhantomData }
    }
}

/// Bucket and index within it of a slot.
fn locate(slot: u32) -> (usize, usize) {
    let n = slot as usize + 1;
    let bucket = (usize::BITS - 1 - n.leading_zeros()) as usize;
    (bucket, n - (1 << bucket))
}

impl<T: Default> PerOrg<T> {
    /// The state of organisation `slot`.
    pub fn get(&self, slot: u32) -> &T {
        let (bucket, index) = locate(slot);
        let mut entries = self.buckets[bucket].load(Ordering::Acquire);
        if entries.is_null() {
            entries = self.allocate(bucket);
        }
        // SAFETY: `entries` points to a live bucket of `2^bucket` initialised entries (set once,
        // freed only in `drop`), and `index < 2^bucket`.
        unsafe { &*entries.add(index) }
    }

    /// The state of every slot whose bucket exists, with the slot: entries never reached hold
    /// `T::default()`.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.buckets.iter().enumerate().flat_map(|(bucket, entries)| {
            let entries = entries.load(Ordering::Acquire);
            let len = if entries.is_null() { 0 } else { 1usize << bucket };
            // SAFETY: as in `get`; a null bucket yields nothing.
            let slice: &[T] = if len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(entries, len) } };
            slice.iter().enumerate().map(move |(i, t)| (((1usize << bucket) - 1 + i) as u32, t))
        })
    }

    #[cold]
    fn allocate(&self, bucket: usize) -> *mut T {
        let fresh: Box<[T]> = (0..1usize << bucket).map(|_| T::default()).collect();
        let fresh = Box::into_raw(fresh) as *mut T;
        match self.buckets[bucket].compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh,
            Err(theirs) => {
                // Another thread allocated it first: use theirs.
                // SAFETY: `fresh` came from `Box::into_raw` of a slice of this length just above.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(fresh, 1 << bucket)) });
                theirs
            }
        }
    }
}

impl<T> Drop for PerOrg<T> {
    fn drop(&mut self) {
        for (bucket, entries) in self.buckets.iter_mut().enumerate() {
            let entries = *entries.get_mut();
            if !entries.is_null() {
                // SAFETY: allocated by `allocate` with exactly this length, freed only here.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(entries, 1 << bucket)) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn slots_map_to_buckets_without_gaps() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1), (1, 0));
        assert_eq!(locate(2), (1, 1));
        assert_eq!(locate(3), (2, 0));
        assert_eq!(locate(6), (2, 3));
        assert_eq!(locate(7), (3, 0));
        assert_eq!(locate(u32::MAX - 1), (31, (1 << 31) - 1));
    }

    #[test]
    fn each_slot_has_its_own_state_shared_by_threads() {
        let table: PerOrg<AtomicU64> = PerOrg::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for slot in 0..5_000u32 {
                        table.get(slot).fetch_add(u64::from(slot), Ordering::Relaxed);
                    }
                });
            }
        });
        assert!((0..5_000u32).all(|slot| table.get(slot).load(Ordering::Relaxed) == 4 * u64::from(slot)));
        let seen: Vec<u32> = table.iter().filter(|(_, v)| v.load(Ordering::Relaxed) > 0).map(|(s, _)| s).collect();
        assert_eq!(seen, (1..5_000).collect::<Vec<_>>(), "every slot once, in order (slot 0 added zero)");
    }

    #[test]
    fn interning_gives_one_slot_per_text() {
        let (a, slot_a) = intern("org_slots_test_a");
        let (_, slot_b) = intern("org_slots_test_b");
        let (again, slot_again) = intern("org_slots_test_a");
        assert_ne!(slot_a, slot_b);
        assert_eq!(slot_a, slot_again);
        assert!(Arc::ptr_eq(&a, &again), "one allocation per id");
        assert_eq!(text_of(slot_b).as_deref(), Some("org_slots_test_b"));
    }
}
