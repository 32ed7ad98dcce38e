//! Library half of `agentctl`: the example rules agent, the browser-like workload, load
//! generation and reporting, shared by the binary, its tests and the benchmarks.
#![warn(missing_docs)]

pub mod load;
pub mod progress;
pub mod report;
pub mod rules;
pub mod workload;
