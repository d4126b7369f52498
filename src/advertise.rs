//! [`Advertised`]: a handler that advertises the MCP extensions the guard
//! supports beside the ones the inner handler advertises.
//!
//! A resource server that accepts tokens a client obtained for itself
//! ([`ResourceServerBuilder::accept_client_credentials`](crate::oauth::ResourceServerBuilder::accept_client_credentials),
//! on by default) supports the extension
//! [`io.modelcontextprotocol/oauth-client-credentials`](CLIENT_CREDENTIALS_EXTENSION),
//! and the spec recommends saying so in `server/discover`. The handler cannot
//! know it: the resource server does. [`Guard::router`](crate::Guard::router)
//! wraps every handler in an `Advertised` that adds the extension to the
//! capabilities of `server/discover` (2026-07-28), of `initialize` (earlier
//! revisions) and of `get_info`, so both eras see the same capabilities.
//!
//! It only adds: an extension the inner handler already advertises keeps the
//! handler's settings, and nothing the handler advertises is removed. Every
//! other method goes to the inner handler unchanged.
//!
//! ```
//! use rmcp::ServerHandler;
//! use rmcp::model::{JsonObject, ServerCapabilities, ServerConfig};
//! use rmcp_guard::advertise::{Advertised, CLIENT_CREDENTIALS_EXTENSION};
//!
//! #[derive(Clone)]
//! struct MyServer;
//! impl ServerHandler for MyServer {
//!     fn get_info(&self) -> ServerConfig {
//!         ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
//!     }
//! }
//!
//! let handler = Advertised::new(MyServer).extension(CLIENT_CREDENTIALS_EXTENSION, JsonObject::new());
//! let capabilities = handler.get_info().capabilities;
//! assert!(capabilities.tools.is_some());
//! assert!(capabilities.extensions.unwrap().contains_key(CLIENT_CREDENTIALS_EXTENSION));
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::ServerHandler;
use rmcp::model::*;
use rmcp::service::{MaybeSendFuture, NotificationContext, RequestContext, RoleServer, SubscriptionContext};

type McpError = rmcp::ErrorData;

/// The identifier of the OAuth client credentials extension: machine-to-machine
/// access with tokens a client obtained for itself.
pub const CLIENT_CREDENTIALS_EXTENSION: &str = "io.modelcontextprotocol/oauth-client-credentials";

/// An rmcp handler that advertises extensions beside the inner handler's; see
/// the [module docs](self).
#[derive(Debug, Clone)]
pub struct Advertised<S> {
    inner: S,
    extensions: Arc<ExtensionCapabilities>,
}

impl<S> Advertised<S> {
    /// Wrap `inner`, adding no extension yet.
    pub fn new(inner: S) -> Self {
        Advertised {
            inner,
            extensions: Arc::new(ExtensionCapabilities::new()),
        }
    }

    /// Wrap `inner` with a set of extensions shared with other handlers.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))] // used by `Guard`
    pub(crate) fn with_extensions(inner: S, extensions: Arc<ExtensionCapabilities>) -> Self {
        Advertised { inner, extensions }
    }

    /// Advertise the extension `id` with `settings` (an empty object means
    /// support without settings), unless the inner handler advertises `id`
    /// itself. Defaults to none.
    pub fn extension(mut self, id: impl Into<String>, settings: JsonObject) -> Self {
        Arc::make_mut(&mut self.extensions).insert(id.into(), settings);
        self
    }

    /// The extensions added to the inner handler's.
    pub fn extensions(&self) -> &ExtensionCapabilities {
        &self.extensions
    }

    define_inner_service_accessors!();

    /// Add the extensions the inner handler does not advertise itself.
    fn merge_into(&self, capabilities: &mut ServerCapabilities) {
        if self.extensions.is_empty() {
            return;
        }
        let advertised = capabilities.extensions.get_or_insert_default();
        for (id, settings) in self.extensions.iter() {
            advertised.entry(id.clone()).or_insert_with(|| settings.clone());
        }
    }
}

#[allow(deprecated)] // every method goes to the inner handler, the deprecated ones too
impl<S: ServerHandler> ServerHandler for Advertised<S> {
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let mut result = self.inner.initialize(request, context).await?;
        self.merge_into(&mut result.capabilities);
        Ok(result)
    }

    fn negotiate_initialize(&self, request: &InitializeRequestParams) -> Result<InitializeResult, McpError> {
        let mut result = self.inner.negotiate_initialize(request)?;
        self.merge_into(&mut result.capabilities);
        Ok(result)
    }

    async fn discover(&self, context: RequestContext<RoleServer>) -> Result<DiscoverResult, McpError> {
        let mut result = self.inner.discover(context).await?;
        self.merge_into(&mut result.capabilities);
        Ok(result)
    }

    forward_server_handler!();

    fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, McpError>> + MaybeSendFuture + '_ {
        self.inner.call_tool(request, context)
    }

    fn get_info(&self) -> ServerConfig {
        let mut info = self.inner.get_info();
        self.merge_into(&mut info.capabilities);
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Inner(ServerCapabilities);

    impl ServerHandler for Inner {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(self.0.clone())
        }
    }

    fn settings(key: &str) -> JsonObject {
        let mut object = JsonObject::new();
        object.insert(key.to_owned(), serde_json::Value::Bool(true));
        object
    }

    #[test]
    fn no_extension_leaves_the_capabilities_as_they_are() {
        let caps = ServerCapabilities::builder().enable_tools().build();
        let handler = Advertised::new(Inner(caps.clone()));
        assert_eq!(handler.get_info().capabilities, caps);
    }

    #[test]
    fn the_inner_handlers_extensions_are_kept_and_its_settings_win() {
        let mut inner = ExtensionCapabilities::new();
        inner.insert("com.example/own".to_owned(), settings("mine"));
        inner.insert(CLIENT_CREDENTIALS_EXTENSION.to_owned(), settings("inner"));
        let caps = ServerCapabilities::builder()
            .enable_extensions_with(inner)
            .enable_tools()
            .build();
        let handler = Advertised::new(Inner(caps)).extension(CLIENT_CREDENTIALS_EXTENSION, settings("guard"));
        let info = handler.get_info().capabilities;
        let extensions = info.extensions.expect("extensions");
        assert_eq!(extensions["com.example/own"], settings("mine"));
        assert_eq!(extensions[CLIENT_CREDENTIALS_EXTENSION], settings("inner"));
        assert!(info.tools.is_some());
    }
}
