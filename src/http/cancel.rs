//! Ending one HTTP/2 stream from outside hyper: hyper runs each stream as
//! a task of its own, spawned through [`StreamExecutor`], and a request can
//! take that task's [`Cancel`]; once it fires, the stream's task ends, and
//! h2 resets the stream (`RST_STREAM` with `CANCEL`) while the connection
//! and its other streams go on.
//!
//! The change feed needs it for a subscriber whose stream window stays
//! shut: hyper then waits for window and no longer polls the body, so the
//! body itself cannot end the stream.

use std::cell::OnceCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

tokio::task_local! {
    /// The cancel of the HTTP/2 stream this task serves, made when a
    /// request first asks for it.
    static STREAM: OnceCell<Cancel>;
}

/// Ends the HTTP/2 stream it was taken from once fired (after a wake-up of
/// that stream's task).
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// The cancel of the HTTP/2 stream the calling task serves; `None` on
    /// HTTP/1, whose connection is its own task.
    pub fn of_this_stream() -> Option<Cancel> {
        STREAM
            .try_with(|slot| slot.get_or_init(Cancel::default).clone())
            .ok()
    }

    /// Ends the stream at its task's next poll: the caller wakes it.
    pub fn fire(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn fired(slot: &OnceCell<Cancel>) -> bool {
        slot.get()
            .is_some_and(|cancel| cancel.0.load(Ordering::Acquire))
    }
}

/// hyper's executor for HTTP/2 streams: tokio, with a [`Cancel`] per
/// stream (allocated only if a request takes it).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(STREAM.scope(OnceCell::new(), async move {
            tokio::pin!(stream);
            std::future::poll_fn(|cx| {
                if STREAM.with(Cancel::fired) {
                    return Poll::Ready(());
                }
                stream.as_mut().poll(cx)
            })
            .await;
        }));
    }
}
