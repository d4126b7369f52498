//! The one body every middleware answers with: the inner service's body, or
//! its own rejection. Public bodies wrap it opaquely (`opaque_body!`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's body, or a short rejection body.
    #[project = RejectOrProj]
    pub(crate) enum RejectOr<B> {
        Inner {
            #[pin]
            body: B,
        },
        Rejection {
            body: Option<Bytes>,
        },
    }
}

impl<B> Body for RejectOr<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            RejectOrProj::Inner { body } => body.poll_frame(cx),
            RejectOrProj::Rejection { body } => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RejectOr::Inner { body } => body.is_end_stream(),
            RejectOr::Rejection { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RejectOr::Inner { body } => body.size_hint(),
            RejectOr::Rejection { body } => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
