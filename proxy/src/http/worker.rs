//! Which HTTP worker's event loop a thread runs, and whether that worker is saturated: the
//! pool's shard (`pool.rs`) and the fast path's batching (`fast/pipeline.rs`) go by them.

use std::time::{Duration, Instant};

/// How long a worker thread must have run without going idle before requests wait for the
/// rest of its pass to be sent upstream (`worker_saturated_at`).
pub(super) const SATURATED_AFTER: Duration = Duration::from_millis(1);

thread_local! {
    /// When this runtime worker thread last woke from an idle park, if the runtime reports it
    /// (`worker_unparked`).
    static UNPARKED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    /// Which HTTP worker's event loop this thread runs (`HttpConfig::workers`); 0 for the
    /// process runtime's threads.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called on an HTTP worker's thread before its event loop starts.
pub fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n));
}

pub(super) fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// A runtime hook for `tokio::runtime::Builder::on_thread_unpark`: the worker had been idle.
pub fn worker_unparked() {
    UNPARKED.with(|u| u.set(Some(Instant::now())));
}

/// Whether this worker has been busy without a break for `SATURATED_AFTER` at `now`: its CPU is the
/// limit, and the requests it reads should leave in batches.
///
/// Why: on cores shared with load and backends, sending each request upstream the moment it
/// is read woke the backend for about 2.6 requests at a time, ~20k wake-ups (and IPIs) a
/// second, against ~2k behind nginx. Requeueing first (`requeue`) lets the worker finish what
/// its last `epoll_wait` returned, so requests reach a backend together. That took one worker
/// from 46–53k to 59–73k requests/s on 2 shared cores (`proxy/src/http/STATUS.md`). When the
/// worker has spare CPU (it parks between events) there is nothing to batch, and the requeue
/// would only add a little latency per request, so it is skipped. Without the hook installed
/// this is always false. `now`: a clock reading of about the current time the caller has.
pub(super) fn worker_saturated_at(now: Instant) -> bool {
    saturated(UNPARKED.with(|u| u.get()), now)
}

fn saturated(unparked: Option<Instant>, now: Instant) -> bool {
    unparked.is_some_and(|t| now.saturating_duration_since(t) >= SATURATED_AFTER)
}

/// Goes to the back of the event loop's run queue once: the tasks already woken run first.
/// Unlike `tokio::task::yield_now`, which defers the task until the runtime has polled epoll
/// again, this adds no `epoll_wait`: A/B on 2 shared cores, 4 rounds each, 1 worker 60–63k
/// requests/s at p99 3.1–3.4 ms against 58–63k at 3.3–3.6 ms with `yield_now`.
pub(super) async fn requeue() {
    let mut once = false;
    std::future::poll_fn(|cx| {
        if once {
            return std::task::Poll::Ready(());
        }
        once = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requeue_lets_the_woken_tasks_run_first() {
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log =
            |o: &std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>, s| o.lock().unwrap().push(s);
        let (o1, o2) = (order.clone(), order.clone());
        let a = tokio::spawn(async move {
            log(&o1, "a reads");
            requeue().await;
            log(&o1, "a sends");
        });
        let b = tokio::spawn(async move { log(&o2, "b reads") });
        let (_, _) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!(*order.lock().unwrap(), ["a reads", "b reads", "a sends"]);
    }

    #[test]
    fn a_worker_is_saturated_only_after_running_without_a_break() {
        let t = Instant::now();
        assert!(
            !saturated(None, t + Duration::from_secs(5)),
            "no hook: never"
        );
        assert!(!saturated(Some(t), t));
        assert!(!saturated(Some(t), t + SATURATED_AFTER / 2));
        assert!(saturated(Some(t), t + SATURATED_AFTER));
        // The thread-local the runtime hook sets.
        std::thread::spawn(|| {
            assert!(
                !worker_saturated_at(Instant::now()),
                "a thread without the hook"
            );
            worker_unparked();
            std::thread::sleep(SATURATED_AFTER * 2);
            assert!(worker_saturated_at(Instant::now()));
        })
        .join()
        .unwrap();
    }
}
