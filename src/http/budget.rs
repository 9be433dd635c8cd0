//! One budget for the request bytes held in memory by all requests together.
//!
//! Each request holds a [`Lease`] that grows as its body arrives (never from
//! what `Content-Length` promises), as it is decompressed and while it is
//! parsed, and that gives everything back when the request ends, however it
//! ends: the lease is dropped with the request's future, so a client that
//! hangs up cannot leak budget. Past the budget a request gets 503 with
//! `Retry-After` instead of more memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::body::BodyError;

#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget { limit, used: AtomicUsize::new(0) })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn lease(self: &Arc<Self>) -> Lease {
        Lease { budget: self.clone(), held: 0 }
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }
}

/// Bytes one request holds; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Lease {
    /// Takes `n` more bytes, or answers 503 when the budget has no room.
    pub fn grow(&mut self, n: usize) -> Result<(), BodyError> {
        if n == 0 {
            return Ok(());
        }
        if !self.budget.take(n) {
            metrics::counter!(crate::metrics::OVERLOADED).increment(1);
            return Err(BodyError::Overloaded);
        }
        self.held += n;
        Ok(())
    }

    /// Gives back what exceeds `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        if self.held > keep {
            self.budget.used.fetch_sub(self.held - keep, Ordering::AcqRel);
            self.held = keep;
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// Appends `data` to `out`, charging every capacity increase to `lease` first.
pub fn push(out: &mut Vec<u8>, data: &[u8], lease: &mut Lease) -> Result<(), BodyError> {
    let needed = out.len() + data.len();
    if needed > out.capacity() {
        // Exact for the first chunk (most bodies are one chunk); doubling after that.
        let target = if out.capacity() == 0 { needed } else { needed.max(out.capacity() * 2) };
        lease.grow(target - out.capacity())?;
        out.reserve_exact(target - out.len());
    }
    out.extend_from_slice(data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_bounded_and_given_back() {
        let budget = MemoryBudget::new(1000);
        let mut a = budget.lease();
        a.grow(600).unwrap();
        let mut b = budget.lease();
        assert!(matches!(b.grow(500), Err(BodyError::Overloaded)));
        b.grow(400).unwrap();
        assert_eq!(budget.used(), 1000);
        drop(a);
        assert_eq!(budget.used(), 400);
        b.shrink_to(100);
        assert_eq!(budget.used(), 100);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn push_charges_capacity_not_promises() {
        let budget = MemoryBudget::new(1 << 20);
        let mut lease = budget.lease();
        let mut out = Vec::new();
        push(&mut out, &[1; 100], &mut lease).unwrap();
        assert_eq!(lease.held(), out.capacity());
        for _ in 0..50 {
            push(&mut out, &[2; 100], &mut lease).unwrap();
        }
        assert!(lease.held() >= out.capacity() && lease.held() <= 2 * out.len(), "{}", lease.held());
        let small = MemoryBudget::new(150);
        let mut lease = small.lease();
        let mut out = Vec::new();
        push(&mut out, &[1; 100], &mut lease).unwrap();
        assert!(matches!(push(&mut out, &[1; 100], &mut lease), Err(BodyError::Overloaded)));
    }
}
