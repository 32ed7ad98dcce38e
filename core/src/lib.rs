//! Sans-IO core of Agent Protocol v2.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod health;
pub mod metrics;
pub mod pool;

pub use health::HealthState;
