//! OAuth 2.1 resource server.
