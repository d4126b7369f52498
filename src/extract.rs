//! Reading the request behind an rmcp call, for the extractors of this crate.
//!
//! rmcp's Streamable HTTP server copies each HTTP request's
//! [`http::request::Parts`] into the extensions of the JSON-RPC request it
//! dispatches; the guard's layers put the caller and its capabilities into
//! those `Parts`. A leaf: the extractors of [`Principal`](crate::Principal),
//! credentials and downstream tokens read through here.

use rmcp::handler::server::common::AsRequestContext;

/// The value of type `T` the guard's layers put into this request, or one a
/// custom transport put directly into the rmcp extensions.
pub(crate) fn extension<T, C>(context: &C) -> Option<T>
where
    T: Clone + Send + Sync + 'static,
    C: AsRequestContext,
{
    let extensions = &context.as_request_context().extensions;
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<T>())
        .or_else(|| extensions.get::<T>())
        .cloned()
}
