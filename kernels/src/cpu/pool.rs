//! A thread pool for one-token latency. A decode step runs hundreds of small ops; each op
//! that is worth splitting is handed to the pool's threads, which are already running: they
//! spin on a generation counter between ops, so a dispatch costs one atomic store and the
//! wait one counter, not a thread wake-up. Threads that find nothing to do for a while park
//! on a condition variable, so an idle pool (between requests, in a test suite running many
//! models at once) does not burn cores.
//!
//! The calling thread is worker 0 and always takes part: a pool of 1 thread spawns nothing.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle thread spins before parking: longer than the gap between two ops of a
/// decode step and than sampling one token, shorter than anything a person would notice
/// as a busy core.
const SPIN_BEFORE_PARKING: Duration = Duration::from_millis(2);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// The current job, valid from a bump of `generation` until `pending` reaches 0.
    job: UnsafeCell<Option<&'static Job>>,
    generation: AtomicU64,
    /// Workers (other than the caller) still running the current job.
    pending: AtomicUsize,
    parked: AtomicUsize,
    stop: AtomicBool,
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the dispatching thread while no worker reads it (all have
// finished the previous job: `pending` was 0) and read by workers only after they observe the
// generation bump that follows the write (Release/Acquire on `generation`).
unsafe impl Sync for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes dispatches from different threads sharing one pool.
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` (≥ 1) including the calling thread.
    pub fn new(n_threads: usize) -> std::io::Result<ThreadPool> {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: Mutex::new(None),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for ith in 1..n_threads.max(1) {
            let shared = Arc::clone(&shared);
            let n = n_threads;
            workers.push(std::thread::Builder::new().name(format!("retort-{ith}")).spawn(move || worker(&shared, ith, n))?);
        }
        Ok(ThreadPool { shared, workers, dispatch: Mutex::new(()) })
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(ith, n_threads)` once on every thread of the pool (the caller is ith 0) and
    /// returns when all have finished. A panic in any of them is re-raised here.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.n_threads();
        if n == 1 {
            return job(0, 1);
        }
        let _one_dispatch_at_a_time = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: the job outlives its use: this function does not return before `pending`
        // is back to 0, i.e. before every worker is done with it.
        let job_static: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(job) };
        unsafe { *shared.job.get() = Some(job_static) };
        shared.pending.store(n - 1, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, n)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        unsafe { *shared.job.get() = None };
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = shared.panicked.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(payload);
        }
    }

    /// Calls `body` on consecutive ranges of `0..n`, each `grain` long (the last shorter),
    /// handed out to the pool's threads as they come free, so a thread slowed by the
    /// machine's noise takes fewer of them.
    pub fn for_ranges(&self, n: usize, grain: usize, body: impl Fn(Range<usize>) + Sync) {
        let grain = grain.max(1);
        if n <= grain || self.n_threads() == 1 {
            if n > 0 {
                body(0..n);
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_, _| loop {
            let start = next.fetch_add(grain, Ordering::Relaxed);
            if start >= n {
                break;
            }
            body(start..(start + grain).min(n));
        });
    }

    /// Like [`for_ranges`](Self::for_ranges), but each range is a share of what is left (at
    /// most `max_grain`, at least 1): long ranges while much remains, single items at the
    /// end, so a thread slowed by the machine's noise does not leave the others waiting on
    /// its last long range.
    pub fn for_ranges_guided(&self, n: usize, max_grain: usize, body: impl Fn(Range<usize>) + Sync) {
        let (threads, max_grain) = (self.n_threads(), max_grain.max(1));
        if threads == 1 || n <= 1 {
            // Ranges of max_grain still: a caller may size its working set by them.
            for start in (0..n).step_by(max_grain) {
                body(start..(start + max_grain).min(n));
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_, _| loop {
            let mut start = next.load(Ordering::Relaxed);
            let end = loop {
                if start >= n {
                    return;
                }
                let end = start + ((n - start) / (2 * threads)).clamp(1, max_grain);
                match next.compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break end,
                    Err(now) => start = now,
                }
            };
            body(start..end);
        });
    }

    /// Calls `body(first_row, chunk)` on consecutive chunks of the rows of `out` (`width`
    /// values each) across the pool: row-wise ops over a batch (norms, rotations,
    /// element-wise products), which would otherwise leave the other threads idle. One or two
    /// rows (a decode step) run on the calling thread alone: a dispatch would cost more.
    pub fn for_row_chunks(&self, out: &mut [f32], width: usize, body: impl Fn(usize, &mut [f32]) + Sync) {
        assert!(width > 0 && out.len() % width == 0, "{} values are not rows of {width}", out.len());
        let n = out.len() / width;
        let grain = n.div_ceil(4 * self.n_threads()).max(2);
        let base = SharedMut(out.as_mut_ptr());
        self.for_ranges(n, grain, |rows| {
            // SAFETY: the ranges are disjoint and inside `out`, which stays borrowed meanwhile.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(rows.start * width), rows.len() * width) };
            body(rows.start, chunk);
        });
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker(shared: &Shared, ith: usize, n: usize) {
    let mut seen = 0u64;
    loop {
        let mut idle_since = None::<Instant>;
        let mut spins = 0u32;
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN_BEFORE_PARKING {
                continue;
            }
            let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.parked.fetch_add(1, Ordering::SeqCst);
            while shared.generation.load(Ordering::SeqCst) == seen && !shared.stop.load(Ordering::SeqCst) {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
            idle_since = None;
        }
        // SAFETY: see `Shared`: the job was stored before the generation bump we observed.
        if let Some(job) = unsafe { *shared.job.get() } {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(ith, n))) {
                *shared.panicked.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A buffer that the tasks of one `run` write at disjoint indices: each task must own the
/// elements it writes (the callers say why theirs do).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: tasks write disjoint elements (see the callers).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}
impl<T> SharedMut<T> {
    /// SAFETY of the caller: i is in bounds and no other thread touches element i.
    pub(crate) unsafe fn at(self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_every_job_once() {
        for n in [1, 2, 3, 5] {
            let pool = ThreadPool::new(n).unwrap();
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|ith, nth| {
                    assert_eq!(nth, n);
                    hits[ith].fetch_add(round + 1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == round + 1), "n={n} round={round}");
                if round == 100 {
                    // Let the workers park, then check that they wake up again.
                    std::thread::sleep(SPIN_BEFORE_PARKING * 3);
                }
            }
        }
    }

    #[test]
    fn ranges_cover_everything_exactly_once() {
        let pool = ThreadPool::new(3).unwrap();
        let single = ThreadPool::new(1).unwrap();
        for (n, grain) in [(0, 4), (1, 4), (1000, 7), (64, 64), (65, 64)] {
            let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_ranges(n, grain, |r| {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "n={n} grain={grain}");
            for pool in [&pool, &single] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_ranges_guided(n, grain, |r| {
                    assert!(r.len() <= grain.max(1), "guided range {r:?} longer than {grain}");
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "guided: n={n} grain={grain}");
            }
        }
    }

    #[test]
    fn a_panicking_worker_is_reported_to_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| pool.run(&|ith, _| assert_ne!(ith, 1, "worker 1 fails"))));
        assert!(result.is_err());
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
