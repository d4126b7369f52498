pub mod bao;
pub mod example;
pub mod redis;
