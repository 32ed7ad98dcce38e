//! Test harnesses (feature `test-util`): the protocol's state machines driven without I/O, the
//! way the drivers drive them, for the tests, benches and fuzz targets of every crate.
//!
//! - [`FramedAgent`]: one agent connection behind its codec, fed and drained as bytes.
//! - [`FramedProxy`]: the same for one proxy connection.
//! - [`Pair`]: a proxy connection and an agent connection wired together in memory with a
//!   simulated clock (as quinn-proto's `Pair`), over framed bytes or typed messages.

mod framed_agent;
mod framed_proxy;
mod pair;

pub use framed_agent::FramedAgent;
pub use framed_proxy::FramedProxy;
pub use pair::{Pair, Transport};
