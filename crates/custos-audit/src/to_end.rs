//! Work that runs to its end whether or not anyone still waits for it.
//!
//! A client that hangs up drops the future serving it. Work that acts (a tool call, the commit
//! that records it) must not stop half-way then. [`to_end`] runs the work on the caller's own
//! task while the caller waits — no hand-off to another task, no wake-up of another thread —
//! and only if the caller's future is dropped first does the rest of the work move to a task
//! of its own on the current runtime, where it finishes. The work is boxed, so moving it does
//! not move the pinned future itself.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use thiserror::Error;

/// The work panicked; the caller should fail closed.
#[derive(Debug, Error)]
#[error("the work panicked")]
pub struct Panicked;

/// Runs `work` on the caller's task; if the caller stops waiting before it ends, the rest of
/// it is spawned on the current runtime and runs to its end there. A panic in the work is
/// caught and answered as [`Panicked`]. (To have shutdown wait for the work, pass it through
/// `tokio_util::task::TaskTracker::track_future` first: the tracking moves with it.)
pub fn to_end<F>(work: F) -> ToEnd<F>
where
    F: Future + Send + 'static,
{
    ToEnd {
        work: Some(Box::pin(work)),
    }
}

/// The future of [`to_end`]. Polled again after it completed, it stays pending.
#[must_use = "the work runs only when awaited"]
pub struct ToEnd<F>
where
    F: Future + Send + 'static,
{
    work: Option<Pin<Box<F>>>,
}

impl<F> Future for ToEnd<F>
where
    F: Future + Send + 'static,
{
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Pending;
        };
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => {
                self.work = None;
                Poll::Ready(Ok(v))
            }
            Err(_) => {
                self.work = None;
                tracing::error!("work meant to run to its end panicked");
                Poll::Ready(Err(Panicked))
            }
        }
    }
}

impl<F> Drop for ToEnd<F>
where
    F: Future + Send + 'static,
{
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = work.await;
                });
            }
            // Dropped outside any runtime (cannot happen to work that was polled on one and is
            // dropped by it): nothing can finish it; say so.
            Err(_) => tracing::error!("work meant to run to its end was dropped outside a runtime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_inline_and_answers() {
        assert_eq!(to_end(async { 7 }).await.expect("ran"), 7);
    }

    #[tokio::test]
    async fn finishes_after_the_caller_stops_waiting() {
        let done = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let work = {
            let done = done.clone();
            to_end(async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(30)).await;
                done.store(true, Ordering::SeqCst);
            })
        };
        // The caller waits until the work is half-way, then gives up.
        let caller = tokio::spawn(work);
        started.await.expect("started");
        caller.abort();
        let _ = caller.await;
        assert!(
            !done.load(Ordering::SeqCst),
            "not yet finished when dropped"
        );
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the dropped work never finished");
    }

    #[tokio::test]
    async fn a_panic_is_an_error_not_a_crash() {
        let r = to_end(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
        })
        .await;
        assert!(r.is_err());
    }
}
