//! Byte buffers kept per thread (per event loop) for the fast path's requests: the client read
//! buffer, the upstream read buffer and the heads built for each side are taken here while a
//! request runs and given back when it ends, instead of allocated and freed for every request.
//!
//! Why: those four were a third of the ~12 allocations a request made (callgrind, issue 17.5);
//! a buffer taken here is a pop from a thread-local list. An idle connection holds none (the
//! read buffer goes back between requests), so keeping them costs at most `KEEP` buffers of
//! up to `LARGEST` bytes per thread. A buffer given back on another thread than the one it was
//! taken on (a task moved by the runtime) simply stays there.

use std::cell::RefCell;

/// Buffers kept per thread and size class.
const KEEP: usize = 64;
/// Buffers larger than this are freed, not kept (a response that needed a big head).
const LARGEST: usize = 64 * 1024;
/// The classes: buffers of at least `SMALL` bytes (heads, the client's request) and of at
/// least `LARGE` (upstream reads).
pub(super) const SMALL: usize = 4096;
pub(super) const LARGE: usize = 8192;

thread_local! {
    static FREE: RefCell<[Vec<Vec<u8>>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

#[inline]
fn class(capacity: usize) -> Option<usize> {
    match capacity {
        c if c > LARGEST => None,
        c if c >= LARGE => Some(1),
        c if c >= SMALL => Some(0),
        _ => None,
    }
}

/// An empty buffer with room for at least `want` bytes.
#[inline]
pub(super) fn take(want: usize) -> Vec<u8> {
    let cap = if want <= SMALL {
        SMALL
    } else {
        want.max(LARGE)
    };
    let kept = class(cap).and_then(|c| FREE.try_with(|f| f.borrow_mut()[c].pop()).ok().flatten());
    match kept {
        Some(mut b) => {
            b.reserve(want);
            b
        }
        None => Vec::with_capacity(cap),
    }
}

/// Gives `b` back for a later request on this thread (or frees it).
#[inline]
pub(super) fn give(mut b: Vec<u8>) {
    let Some(c) = class(b.capacity()) else {
        return;
    };
    b.clear();
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f[c].len() < KEEP {
            f[c].push(b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_with_their_room_and_big_ones_are_freed() {
        let mut a = take(100);
        assert!(a.capacity() >= SMALL && a.is_empty());
        a.extend_from_slice(b"request");
        let ptr = a.as_ptr();
        give(a);
        let b = take(200);
        assert_eq!(b.as_ptr(), ptr, "the kept buffer");
        assert!(b.is_empty());
        let big = take(LARGE);
        assert!(big.capacity() >= LARGE);
        assert_ne!(big.as_ptr(), ptr, "another class");
        give(big);
        let c = take(LARGE + 10);
        assert!(c.capacity() >= LARGE + 10);
        give(b);
        give(Vec::with_capacity(LARGEST + 1));
        give(Vec::new());
        FREE.with(|f| {
            let f = f.borrow();
            assert_eq!((f[0].len(), f[1].len()), (1, 0));
        });
    }
}
