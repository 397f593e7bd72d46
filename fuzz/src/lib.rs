//! Shared helpers of the fuzz targets: a counting global allocator, so a
//! target can assert how much memory a parser reserved (and no single
//! allocation may exceed 256 MiB, with or without a sanitizer), and the types the
//! pool codec target decodes (shared with the seed generator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A global allocator that counts live bytes and their peak. Each target
/// installs it with `#[global_allocator]`.
#[derive(Debug)]
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The largest single allocation allowed: 256 MiB, libFuzzer's
/// `-malloc_limit_mb=256`, which needs a sanitizer's malloc hooks; this
/// works in builds without one (`cargo fuzz run -s none`) too.
pub const MALLOC_LIMIT: usize = 256 << 20;

fn check_size(size: usize) {
    if size > MALLOC_LIMIT {
        use std::io::Write;
        // No allocation on this path: a fixed message, then abort, which
        // libFuzzer reports as a crash and saves the input.
        let _ = std::io::stderr().write_all(b"==fuzz== allocation over MALLOC_LIMIT (256 MiB)\n");
        std::process::abort();
    }
}

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and only updates two counters on the side, so `System`'s
// guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded unchanged (see the impl's comment).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as if the old block lived until the new one existed,
            // which is what a moving realloc does.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// Starts a measurement: the peak is reset to the bytes live now, which
/// are returned.
pub fn start_measuring() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The most bytes live at once since [`start_measuring`] returned `base`,
/// minus `base`.
pub fn peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// The types `pool_codec` decodes: what pool tasks typically carry.
pub mod codec_types {
    use serde::{Deserialize, Serialize};

    /// An enum with unit, newtype, struct, tuple and recursive variants.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum Shape {
        Empty,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, char),
        Nested(Box<Shape>),
    }

    /// A struct with every kind of field the codec has.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct Record {
        pub id: u64,
        pub name: String,
        pub tags: Vec<String>,
        pub score: Option<i128>,
        pub shapes: Vec<Shape>,
        pub pairs: Vec<(u16, bool)>,
        pub raw: Vec<u8>,
        pub unit: (),
    }
}
