//! Test harnesses (feature `test-util`): the protocol's state machines driven without I/O, the
//! way the drivers drive them, for the tests, benches and fuzz targets of every crate.
//!
//! - [`FramedAgent`]: one agent connection behind its codec, fed and drained as bytes.
//! - [`Pair`]: a proxy connection and an agent connection wired together in memory with a
//!   simulated clock (as quinn-proto's `Pair`), over framed bytes or typed messages.

mod framed_agent;
mod pair;

pub use framed_agent::FramedAgent;
pub use pair::{Pair, Transport};
