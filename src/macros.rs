//! Helpers written once for every middleware (as tower-http's `macros.rs`):
//! the inner-service accessors and opaque response bodies.

/// `get_ref`, `get_mut` and `into_inner` for a middleware whose inner service
/// is the field `inner: S`.
macro_rules! define_inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwrap the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// A public, opaque response body type wrapping
/// [`RejectOr`](crate::body::RejectOr): the inner service's body, or a
/// middleware's own short rejection. Each middleware names its own, so no
/// body type is shared across layers and none exposes its variants.
macro_rules! opaque_body {
    ($(#[$m:meta])* pub type $name:ident<$param:ident>;) => {
        pin_project_lite::pin_project! {
            $(#[$m])*
            pub struct $name<$param> {
                #[pin]
                inner: $crate::body::RejectOr<$param>,
            }
        }

        impl<$param> $name<$param> {
            /// The inner service's body, unchanged.
            pub(crate) fn inner(body: $param) -> Self {
                $name {
                    inner: $crate::body::RejectOr::Inner { body },
                }
            }

            /// A rejection's short body.
            pub(crate) fn rejection(body: bytes::Bytes) -> Self {
                $name {
                    inner: $crate::body::RejectOr::Rejection { body: Some(body) },
                }
            }
        }

        impl<$param> std::fmt::Debug for $name<$param> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl<$param> http_body::Body for $name<$param>
        where
            $param: http_body::Body<Data = bytes::Bytes>,
        {
            type Data = bytes::Bytes;
            type Error = $param::Error;

            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
                self.project().inner.poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> http_body::SizeHint {
                self.inner.size_hint()
            }
        }
    };
}
