//! The client allocates nothing per quote beyond the event it emits: merged quotes share their
//! strings, payloads are borrowed, and queues keep their capacity.
//!
//! A counting global allocator measures a full pass over the qsd corpus through a live client.
// The counting allocator needs `unsafe impl GlobalAlloc`; the crates under test forbid unsafe.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_quotes_allocate_nothing_per_packet() {
    let mut corpus = support::live_corpus();
    // A first pass lets every quote get its first values and every queue its capacity.
    support::feed(&mut corpus);
    let heartbeats = corpus
        .messages
        .iter()
        .map(|message| message.windows(3).filter(|w| w == b"~h~").count())
        .sum::<usize>();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let quotes = support::feed(&mut corpus);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(quotes, corpus.qsd_packets);
    eprintln!("{allocations} allocations for {quotes} quotes and {heartbeats} heartbeats");
    // Each heartbeat's echo is a new String to send; nothing else may allocate.
    assert!(
        allocations <= heartbeats as u64,
        "{allocations} allocations for {quotes} quotes and {heartbeats} heartbeats"
    );
}
