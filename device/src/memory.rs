//! Keeping the device's peak memory near its working set.
//!
//! An inference allocates a fresh buffer for every intermediate tensor, from a few hundred KiB
//! to a few MiB each, and frees it a few operators later. Served from glibc's heap, between the
//! small allocations of everything else, these buffers leave holes that stay resident, and the
//! serve peak grows well past the tensors that are live at any moment (BENCHMARKS.md). Handed
//! straight back to the kernel instead, every slice pays to fault their pages in again.
//!
//! [`TensorHeap`] gives large buffers a heap of their own: one reserved stretch of address
//! space, managed by a two-level segregated fit allocator (the `rlsf` crate), which splits and
//! merges free blocks. Nothing small lands between the large buffers, so freed neighbours merge
//! and the next slice's buffers reuse the same pages: what stays resident is close to the
//! largest set of buffers live at once. The heap keeps those pages for the life of the
//! process, which is the point (no page faults per slice); the slice size limit and
//! [`crate::preprocess::resize_map`]'s care with long thin slices keep that high-water mark
//! bounded.
//!
//! glibc also gives every thread that allocates a heap of its own (an arena). The device loads
//! the model on the main thread and runs each request on its link's thread, so small load-time
//! and request-time allocations would stay resident in two heaps; [`one_allocator_arena`]
//! keeps them in one. The device runs one inference at a time, so neither costs lock
//! contention.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rlsf::Tlsf;

/// Allocations of at least this many bytes go to the tensor heap; smaller ones to the system
/// allocator.
pub const LARGE_BLOCK_BYTES: usize = 256 * 1024;

/// Address space reserved for the tensor heap, in bytes. Only the pages written to become
/// resident; a large allocation that does not fit goes to the system allocator.
pub const RESERVED_BYTES: usize = 512 * 1024 * 1024;

/// Most alignment the tensor heap serves; more goes to the system allocator.
const MAX_ALIGN: usize = 4096;

/// Free blocks are sorted into 28 size ranges, powers of two, each split in 32 (rlsf's
/// parameters): blocks of up to 8 GiB, with little rounding waste.
type Segregated = Tlsf<'static, u32, u32, 28, 32>;

/// A global allocator: the system allocator for small allocations, a heap of their own for
/// large ones. Install it in a binary with `#[global_allocator]`.
pub struct TensorHeap {
    pool: Mutex<Pool>,
    /// The reserved range, `start..end` as addresses: empty until the first large allocation,
    /// and for good when the reservation failed. Read without the lock on every free.
    start: AtomicUsize,
    end: AtomicUsize,
    /// Bytes of large allocations live now, and the most live at once.
    live_bytes: AtomicUsize,
    peak_live_bytes: AtomicUsize,
}

struct Pool {
    tlsf: Segregated,
    state: Reservation,
}

#[derive(Clone, Copy, PartialEq)]
enum Reservation {
    NotYet,
    Held,
    Refused,
}

impl Default for TensorHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl TensorHeap {
    pub const fn new() -> Self {
        Self {
            pool: Mutex::new(Pool { tlsf: Tlsf::new(), state: Reservation::NotYet }),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            live_bytes: AtomicUsize::new(0),
            peak_live_bytes: AtomicUsize::new(0),
        }
    }

    /// Bytes of large allocations live now in the tensor heap, and the most live at once.
    pub fn live_bytes(&self) -> (usize, usize) {
        (self.live_bytes.load(Ordering::Relaxed), self.peak_live_bytes.load(Ordering::Relaxed))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // Nothing panics while the lock is held; a poisoned lock still holds a valid pool.
        self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        let addr = ptr as usize;
        addr >= self.start.load(Ordering::Acquire) && addr < self.end.load(Ordering::Acquire)
    }

    fn count(&self, layout: Layout, allocated: bool) {
        if allocated {
            let now = self.live_bytes.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak_live_bytes.fetch_max(now, Ordering::Relaxed);
        } else {
            self.live_bytes.fetch_sub(layout.size(), Ordering::Relaxed);
        }
    }

    /// A block from the tensor heap, or `None` when it is full or could not be reserved.
    fn allocate_large(&self, layout: Layout) -> Option<*mut u8> {
        let mut pool = self.pool();
        if pool.state == Reservation::NotYet {
            if let Some(range) = pool.reserve() {
                // `start` first: while `end` is still 0, no address counts as the heap's.
                self.start.store(range.start, Ordering::Release);
                self.end.store(range.end, Ordering::Release);
            }
        }
        if pool.state != Reservation::Held {
            return None;
        }
        let block = pool.tlsf.allocate(layout)?;
        drop(pool);
        self.count(layout, true);
        Some(block.as_ptr())
    }

    /// # Safety
    /// `ptr` must be a live block of the tensor heap allocated with `layout`.
    unsafe fn deallocate_large(&self, ptr: *mut u8, layout: Layout) {
        self.pool().tlsf.deallocate(NonNull::new_unchecked(ptr), layout.align());
        self.count(layout, false);
    }
}

impl Pool {
    /// Reserves the address space and hands it to the allocator; the range it covers.
    fn reserve(&mut self) -> Option<std::ops::Range<usize>> {
        self.state = Reservation::Refused;
        // SAFETY: a fresh private mapping, owned by the pool for the life of the process.
        let start = unsafe { reserve(RESERVED_BYTES) }?;
        let block = NonNull::slice_from_raw_parts(start, RESERVED_BYTES);
        // SAFETY: the mapping is never unmapped, so it outlives the pool.
        unsafe { self.tlsf.insert_free_block_ptr(block) }?;
        self.state = Reservation::Held;
        let start = start.as_ptr() as usize;
        Some(start..start + RESERVED_BYTES)
    }
}

fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE_BLOCK_BYTES && layout.align() <= MAX_ALIGN
}

/// Reserves `len` bytes of address space; pages become resident when first written.
#[cfg(unix)]
unsafe fn reserve(len: usize) -> Option<NonNull<u8>> {
    let addr = libc::mmap(
        std::ptr::null_mut(),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if addr == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(addr.cast())
    }
}

#[cfg(not(unix))]
unsafe fn reserve(_len: usize) -> Option<NonNull<u8>> {
    None
}

// SAFETY: every block is freed by the allocator that made it: `owns` tells the tensor heap's
// blocks (inside its reserved range) from the system allocator's, whatever the layout.
unsafe impl GlobalAlloc for TensorHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout) {
            if let Some(block) = self.allocate_large(layout) {
                return block;
            }
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            self.deallocate_large(ptr, layout);
        } else {
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !self.owns(ptr) && !is_large(new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        let moved = self.alloc(new_layout);
        if !moved.is_null() {
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        moved
    }
}

/// Makes every thread allocate from one heap. Call before any other thread starts; a no-op
/// where the C library is not glibc.
pub fn one_allocator_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocator tuning and is called before other
        // threads allocate; an unknown parameter would return 0 and leave the defaults.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        if ok == 0 {
            tracing::warn!("glibc refused M_ARENA_MAX = 1; each thread keeps its own heap");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(bytes: usize) -> Layout {
        Layout::from_size_align(bytes, 64).unwrap()
    }

    #[test]
    fn freed_neighbours_merge_and_serve_a_larger_buffer_in_place() {
        let heap = TensorHeap::new();
        unsafe {
            let a = heap.alloc(layout(4 << 20));
            let b = heap.alloc(layout(4 << 20));
            let c = heap.alloc(layout(1 << 20));
            assert!(heap.owns(a) && heap.owns(b) && heap.owns(c));
            assert_eq!(heap.live_bytes().0, 9 << 20);
            heap.dealloc(a, layout(4 << 20));
            heap.dealloc(b, layout(4 << 20));
            // The two freed 4 MiB blocks merged: a 6 MiB buffer fits where they were.
            let d = heap.alloc(layout(6 << 20));
            let (low, high) = (a.min(b) as usize, a.max(b) as usize + (4 << 20));
            assert!((low..high).contains(&(d as usize)), "{d:?} outside {low:#x}..{high:#x}");
            assert!(d as usize + (6 << 20) <= high);
            heap.dealloc(d, layout(6 << 20));
            heap.dealloc(c, layout(1 << 20));
            assert_eq!(heap.live_bytes(), (0, 9 << 20));
        }
    }

    #[test]
    fn contents_survive_realloc_into_and_out_of_the_tensor_heap() {
        let heap = TensorHeap::new();
        unsafe {
            let small = layout(1000);
            let p = heap.alloc(small);
            assert!(!heap.owns(p));
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            let big = heap.realloc(p, small, 1 << 20);
            assert!(heap.owns(big));
            let grown = heap.realloc(big, layout(1 << 20), 3 << 20);
            assert!(heap.owns(grown));
            let back = heap.realloc(grown, layout(3 << 20), 1000);
            assert!(!heap.owns(back));
            for i in 0..1000 {
                assert_eq!(*back.add(i), (i % 251) as u8);
            }
            heap.dealloc(back, small);
            assert_eq!(heap.live_bytes().0, 0);
        }
    }

    #[test]
    fn small_over_aligned_and_oversized_allocations_go_to_the_system_allocator() {
        let heap = TensorHeap::new();
        unsafe {
            let small = layout(LARGE_BLOCK_BYTES - 1);
            let over_aligned = Layout::from_size_align(1 << 20, 2 * MAX_ALIGN).unwrap();
            let oversized = layout(RESERVED_BYTES + 1);
            for l in [small, over_aligned, oversized] {
                let p = heap.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                assert!(!heap.owns(p), "{l:?}");
                p.write_bytes(1, l.size().min(1 << 20));
                heap.dealloc(p, l);
            }
            // A large buffer still comes from the tensor heap, aligned as asked.
            let page = Layout::from_size_align(1 << 20, MAX_ALIGN).unwrap();
            let q = heap.alloc(page);
            assert!(heap.owns(q));
            assert_eq!(q as usize % MAX_ALIGN, 0);
            heap.dealloc(q, page);
        }
    }
}
