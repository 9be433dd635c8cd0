//! Large buffers kept for reuse between blocks.
//!
//! The shipper reads tens of megabytes from the spool and encodes as much for
//! ClickHouse per block. Allocated fresh each time, every page of those buffers
//! is faulted in and zeroed by the kernel again: a third of the edge's CPU while
//! draining a full spool (`perf record`, `clear_page_erms`). A pool keeps a few
//! of them; a buffer comes back once nothing refers to it any more.

use std::sync::Mutex;

use bytes::Bytes;

pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most, and the largest capacity kept: the pool's memory is bounded by
    /// their product whatever the traffic.
    max_buffers: usize,
    max_capacity: usize,
}

impl BufferPool {
    pub fn new(max_buffers: usize, max_capacity: usize) -> Self {
        BufferPool { free: Mutex::new(Vec::new()), max_buffers, max_capacity }
    }

    /// An empty buffer with room for at least `capacity` bytes: the smallest kept one that has
    /// it, else a new one. A kept buffer too small is not grown: growing copies its whole old
    /// allocation, and the new pages fault in anyway; it stays for a smaller ask. (Taking
    /// whichever came back last handed the shipper's 30 MB reads the small ones that follow
    /// them: a fifth of its CPU went to zeroing fresh pages while it drained a spool.)
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.free.lock().expect("buffer pool lock");
        let fit = (0..free.len()).filter(|&i| free[i].capacity() >= capacity).min_by_key(|&i| free[i].capacity());
        match fit {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                Vec::with_capacity(self.rounded(capacity))
            }
        }
    }

    /// A new large buffer's capacity, rounded up to a whole step: the shipper's reads and blocks
    /// differ from one to the next by a few bytes, and one sized exactly for an ask fit none of
    /// the slightly larger ones after it (each then faulted in a buffer of its own).
    fn rounded(&self, capacity: usize) -> usize {
        const STEP: usize = 2 << 20;
        match capacity.checked_next_multiple_of(STEP) {
            Some(up) if capacity >= STEP && up <= self.max_capacity => up,
            _ => capacity,
        }
    }

    /// Keeps `bytes`'s allocation for a later [`take`](Self::take) if nothing else refers to
    /// it (otherwise it is freed when the last reference goes).
    pub fn give(&self, bytes: Bytes) {
        let Ok(mut unique) = bytes.try_into_mut() else { return };
        unique.clear(); // so turning it back into a Vec copies nothing
        let buffer = Vec::from(unique);
        self.keep(buffer);
    }

    /// Keeps a buffer the caller owns.
    pub fn keep(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 || buffer.capacity() > self.max_capacity {
            return;
        }
        buffer.clear();
        let mut free = self.free.lock().expect("buffer pool lock");
        if free.len() < self.max_buffers {
            free.push(buffer);
        } else if let Some(smallest) = free.iter_mut().min_by_key(|b| b.capacity()) {
            // Full: the larger buffers are the ones worth keeping.
            if smallest.capacity() < buffer.capacity() {
                *smallest = buffer;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_nothing_refers_to_it() {
        let pool = BufferPool::new(2, 1 << 20);
        let mut buffer = pool.take(1000);
        buffer.extend_from_slice(&[7; 1000]);
        let address = buffer.as_ptr();
        let bytes = Bytes::from(buffer);
        let slice = bytes.slice(10..20);
        pool.give(bytes.clone());
        assert_eq!(pool.kept(), 0, "a slice still refers to it");
        drop(slice);
        pool.give(bytes);
        assert_eq!(pool.kept(), 1);
        let again = pool.take(500);
        assert_eq!(again.as_ptr(), address, "the same allocation, reused");
        assert!(again.is_empty() && again.capacity() >= 1000);
    }

    #[test]
    fn a_large_ask_gets_a_kept_buffer_large_enough_and_never_grows_a_small_one() {
        let pool = BufferPool::new(3, 1 << 20);
        let (large, small) = (Vec::<u8>::with_capacity(64 << 10), Vec::<u8>::with_capacity(1 << 10));
        let (large_at, small_at) = (large.as_ptr(), small.as_ptr());
        pool.keep(large);
        pool.keep(small); // came back last, as the reads after a block's first one do
        let taken = pool.take(32 << 10);
        assert_eq!(taken.as_ptr(), large_at, "the kept buffer that fits");
        let fresh = pool.take(32 << 10);
        assert!(fresh.capacity() >= 32 << 10 && fresh.as_ptr() != small_at, "a new one, not the small one grown");
        let for_small = pool.take(100);
        assert_eq!(for_small.as_ptr(), small_at, "the small one serves a small ask");
        pool.keep(taken);
        pool.keep(Vec::with_capacity(2 << 10));
        assert_eq!(pool.take(1).capacity(), 2 << 10, "the smallest that fits");
    }

    #[test]
    fn asks_a_few_bytes_apart_share_a_large_buffer() {
        let pool = BufferPool::new(2, 64 << 20);
        let first = pool.take(30_000_000);
        let at = first.as_ptr();
        pool.keep(first);
        let next = pool.take(30_000_123);
        assert_eq!(next.as_ptr(), at, "a larger ask by a few bytes reuses the buffer");
        assert_eq!(pool.take(1000).capacity(), 1000, "small asks are not rounded");
        assert_eq!(pool.take(64 << 20).capacity(), 64 << 20);
        assert_eq!(pool.take((64 << 20) - 5).capacity(), (64 << 20), "rounded up to what the pool keeps");
        let pool = BufferPool::new(2, (64 << 20) - 5);
        assert_eq!(pool.take((64 << 20) - 9).capacity(), (64 << 20) - 9, "never past what the pool keeps");
    }

    #[test]
    fn a_full_pool_keeps_its_largest_buffers() {
        let pool = BufferPool::new(2, 1 << 20);
        pool.keep(Vec::with_capacity(100));
        pool.keep(Vec::with_capacity(200));
        pool.keep(Vec::with_capacity(8 << 10));
        assert_eq!(pool.kept(), 2);
        assert!(pool.take(4 << 10).capacity() >= 8 << 10);
        assert_eq!(pool.take(1).capacity(), 200, "the smallest was let go");
    }

    #[test]
    fn the_pool_is_bounded_in_count_and_size() {
        let pool = BufferPool::new(2, 4096);
        for _ in 0..5 {
            pool.keep(Vec::with_capacity(100));
        }
        assert_eq!(pool.kept(), 2);
        let pool = BufferPool::new(2, 4096);
        pool.keep(Vec::with_capacity(8192));
        assert_eq!(pool.kept(), 0, "larger than the pool keeps");
    }
}
