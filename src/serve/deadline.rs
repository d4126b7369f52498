//! A request body that must arrive whole within a deadline: a client with a
//! valid token cannot hold a request (its connection, its in-flight slot and
//! the buffer rmcp collects the body into) by trickling the body.

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// `body`, failing with [`BodyTimeout`] once `deadline` has passed. The
    /// timer is only armed the first time the body is not ready at once (a
    /// body that arrived with its head costs no timer).
    pub(super) struct DeadlineBody<B> {
        #[pin]
        body: B,
        deadline: Instant,
        sleep: Option<Pin<Box<Sleep>>>,
        timed_out: Arc<AtomicBool>,
    }
}

impl<B> DeadlineBody<B> {
    /// `body`, to be read within `timeout` from now; `timed_out` is set when
    /// it was not.
    pub(super) fn new(body: B, timeout: Duration, timed_out: Arc<AtomicBool>) -> Self {
        DeadlineBody {
            body,
            deadline: Instant::now() + timeout,
            sleep: None,
            timed_out,
        }
    }
}

/// The request body did not arrive within its deadline.
#[derive(Debug)]
pub(super) struct BodyTimeout;

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl Error for BodyTimeout {}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = *this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_its_deadline_and_says_so() {
        let (mut tx, rx) = futures_channel_body();
        tx.push(Bytes::from_static(b"{\"jsonrpc\":"));
        let flag = Arc::new(AtomicBool::new(false));
        let body = DeadlineBody::new(rx, Duration::from_millis(50), flag.clone());
        let collected = body.collect().await;
        assert!(collected.is_err());
        assert!(flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_whole_body_arms_no_timer() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut body = DeadlineBody::new(
            http_body_util::Full::new(Bytes::from_static(b"{}")),
            Duration::ZERO,
            flag.clone(),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{}"));
        assert!(body.sleep.is_none());
        assert!(!flag.load(Ordering::Acquire));
    }

    /// A body that yields the frames pushed, then stays pending forever (a
    /// client that stopped sending).
    fn futures_channel_body() -> (Pushed, Stalled) {
        let frames = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        (Pushed(frames.clone()), Stalled(frames))
    }

    struct Pushed(Arc<std::sync::Mutex<std::collections::VecDeque<Bytes>>>);

    impl Pushed {
        fn push(&mut self, data: Bytes) {
            self.0.lock().unwrap().push_back(data);
        }
    }

    struct Stalled(Arc<std::sync::Mutex<std::collections::VecDeque<Bytes>>>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.lock().unwrap().pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Pending,
            }
        }
    }
}
