pub mod bao;
pub mod example;
pub mod oidc;
pub mod otlp;
pub mod redis;
