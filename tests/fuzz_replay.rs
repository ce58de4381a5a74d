//! The fuzz targets' committed inputs on the stable toolchain: every seed (`fuzz/seeds/`) and
//! every regression input (`fuzz/regressions/`, one per fixed finding) through the same entry
//! points as `cargo fuzz` (fuzz/src/lib.rs), each without a panic and within a memory bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "../fuzz/src/lib.rs"]
mod entries;

/// Counts the bytes live and their peak, so each input's allocations can be bounded.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An input may allocate this much above what was live before it (the bound for a
/// small input: declared sizes are checked before anything that large is allocated).
const MEMORY_BOUND: usize = 2 << 30;

#[test]
fn every_committed_fuzz_input_runs_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (target, run) in entries::TARGETS {
        let seeds = std::fs::read_dir(root.join("seeds").join(target)).map_or(0, Iterator::count);
        assert!(seeds > 0, "fuzz/seeds/{target}: every target has seeds");
        for kind in ["seeds", "regressions"] {
            let dir = root.join(kind).join(target);
            let Ok(files) = std::fs::read_dir(&dir) else { continue };
            for file in files {
                let path = file.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let before = LIVE.load(Ordering::Relaxed);
                PEAK.store(before, Ordering::Relaxed);
                run(&data);
                let used = PEAK.load(Ordering::Relaxed) - before;
                assert!(used <= MEMORY_BOUND, "{}: {used} bytes allocated", path.display());
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} inputs");
    assert!(replayed >= entries::TARGETS.len());
}

/// An image declaring a side over `MAX_IMAGE_SIDE` (this 16×16 JPEG with its header saying
/// 65,517 × 240, as the fuzzer's finding did) is refused before the decoder allocates its
/// canvas, with an error naming the file.
#[test]
fn an_image_declaring_a_huge_side_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/image/jpeg-huge-side.jpg");
    let err = infinity::models::image::load_rgb(&path).unwrap_err().to_string();
    assert!(err.contains("jpeg-huge-side.jpg") && err.contains("limit"), "{err}");
}

/// A few hundred bytes of JPEG declaring a canvas over `MAX_IMAGE_PIXELS` (10,000 × 10,000:
/// seconds of decoding) are refused from the header, naming the file and the limit; one under
/// it (the fuzzer's 12,048 × 1,552 in 544 bytes, 0.2 s here) decodes.
#[test]
fn an_image_declaring_too_many_pixels_is_refused() {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/image");
    let err = infinity::models::image::load_rgb(&regressions.join("jpeg-10000x10000-declared.jpg")).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("jpeg-10000x10000-declared.jpg") && err.contains("100 megapixels, over the limit"), "{err}");
    let image = infinity::models::image::load_rgb(&regressions.join("jpeg-12048x1552-in-544-bytes.jpg")).unwrap();
    assert_eq!(image.dimensions(), (1552, 12048));
}
