//! The room arbiters' threads, and the scheduling hint they run with.
//!
//! A room thread is fed by the HTTP workers: each publish a session reads wakes the room's
//! thread, and the room wakes the members' writers on the workers in turn. Where a worker and
//! a room thread share a core (a one-CPU container, or a broker pinned to one core), the
//! kernel lets the freshly woken room thread preempt the worker at once. The room then
//! handles that one publish, goes back to sleep, and the worker resumes: two context switches
//! per message, about a tenth of the broker's CPU in a 1 → 100 fan-out, and no batching of
//! the room's work.
//!
//! `SCHED_BATCH` tells Linux that a thread is throughput-bound: it still gets its fair share
//! of the CPU, but its wake-ups do not preempt the running thread. The room thread then runs
//! when the worker blocks or its time slice ends, and handles every publish queued by then in
//! one go. On an idle core nothing changes (there is nobody to preempt), so latency on a
//! machine with cores to spare is the same. On a busy core a publish waits until the thread
//! running there blocks or uses up its time slice (a few milliseconds), whether that is a
//! worker or another process; the wait lets more publishes gather, so the members' queues
//! get more than one message per write. Unprivileged processes may select the policy; the
//! nice value is kept.

use actix::{Arbiter, ArbiterHandle};

/// Starts a thread for rooms, with the scheduling hint above where the platform has it.
pub(crate) fn room_arbiter() -> ArbiterHandle {
    let arbiter = Arbiter::new();
    arbiter.spawn_fn(prefer_the_feeding_thread);
    arbiter.handle()
}

/// Marks the calling thread `SCHED_BATCH`. A refusal (a seccomp filter, say) changes only
/// performance, so it is logged at debug level and otherwise ignored.
#[cfg(target_os = "linux")]
fn prefer_the_feeding_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        log::debug!(
            "room thread stays SCHED_OTHER: sched_setscheduler(SCHED_BATCH) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn prefer_the_feeding_thread() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_room_thread_runs_with_sched_batch() {
        let arbiter = room_arbiter();
        let (tx, rx) = tokio::sync::oneshot::channel();
        arbiter.spawn_fn(move || {
            // SAFETY: no arguments; pid 0 is the calling thread.
            let _ = tx.send(unsafe { libc::sched_getscheduler(0) });
        });
        assert_eq!(
            rx.await.expect("the arbiter ran the closure"),
            libc::SCHED_BATCH
        );
        arbiter.stop();
    }
}
