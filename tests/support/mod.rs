pub mod bao;
pub mod redis;
