//! Test support shared by this crate's tests and the fuzz targets.

pub mod differential;
pub mod strategies;
