//! Scratch memory is planned once: after the first steps, decoding a token through the
//! executor performs no heap allocation at all. Counted by a global allocator wrapper.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use retort::runtime::Model;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_decode_does_not_allocate() {
    let Some(path) = retort::models::real_models::real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let model = Model::load(path).unwrap();
    let mut exec = model.executor(64, 16, false, 2).unwrap();
    exec.forward(&[504, 3575, 282, 4649, 314], 0, false).unwrap();
    // Warm-up: thread-local tiles and per-thread buffers reach their size.
    for pos in 5..8 {
        exec.forward(&[7042], pos, false).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for pos in 8..24 {
        exec.forward(&[30], pos, false).unwrap();
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(allocations, 0, "16 decode steps allocated {allocations} times");
}
