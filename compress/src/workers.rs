//! Worker threads for the parallel compressors: each takes jobs from a shared queue, keeps its
//! own state (a compressor) from job to job, and answers every job it takes, even one whose
//! work panicked, so a caller collecting answers in order never waits forever.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;
use std::thread::Scope;

/// Starts `count` threads in `scope`. Each makes its state with `init`, then answers every job
/// it takes from `jobs` with `work(state, job)` on `done` (`panicked()` if that panicked),
/// until `jobs` is closed or `done` has no receiver left.
pub fn start<'scope, 'env, J, R, S>(
    scope: &'scope Scope<'scope, 'env>,
    count: usize,
    jobs: &'scope Mutex<Receiver<J>>,
    done: &Sender<R>,
    init: impl Fn() -> S + Send + Copy + 'scope,
    work: impl Fn(&mut S, J) -> R + Send + Copy + 'scope,
    panicked: impl Fn() -> R + Send + Copy + 'scope,
) where
    J: Send + 'scope,
    R: Send + 'scope,
{
    for _ in 0..count {
        let done = done.clone();
        scope.spawn(move || {
            let mut state = init();
            loop {
                let job = match jobs.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let result = panic::catch_unwind(AssertUnwindSafe(|| work(&mut state, job)))
                    .unwrap_or_else(|_| panicked());
                if done.send(result).is_err() {
                    return;
                }
            }
        });
    }
}
