//! JSON payload codec: whatever decodes as the type chosen by the first byte re-encodes, through
//! the frame layer, into something that decodes to the same value (see `agent_protocol_fuzz::codec`).
#![no_main]

use agent_protocol_core::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agent_protocol_fuzz::codec::round_trip(Encoding::Json, data);
});
