//! MessagePack payload codec (lenient decoder in, named maps out): whatever decodes as the type
//! chosen by the first byte re-encodes, through the frame layer, into something that decodes to
//! the same value (see `agent_protocol_fuzz::codec`). A payload starting with `{` is JSON in a
//! MessagePack session, so that path is covered too.
#![no_main]

use agent_protocol_core::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agent_protocol_fuzz::codec::round_trip(Encoding::MsgPack, data);
});
