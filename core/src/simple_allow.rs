//! A simple allow, the commonest answer: an allow with nothing in it but header operations. Its
//! shape is written down here once (the fields in serde's order, the fixed bytes around the values
//! that vary); `crate::json_agent_response` and `crate::msgpack::agent_response` supply only
//! their syntax, so the agent writes it and the proxy reads it without serde.
//!
//! The writers produce serde's bytes exactly. The readers take only that shape, with at most
//! [`MAX_DIRECT_OPS`] operations per list, and leave anything else to the general decoder, so
//! what they take they decode exactly as the general decoder does (tests/tests/fast_path.rs and
//! the codec fuzz targets hold both directions to serde).

use bytes::{Bytes, BytesMut};

use crate::byte_str::ByteStr;
use crate::response::{AgentResponse, AuditMetadata, Decision, HeaderOp};

/// The most header operations per list the direct answer readers take; a longer list is left to
/// the general decoder. Far under any element budget, so the readers need not count elements.
pub(crate) const MAX_DIRECT_OPS: usize = 32;

/// What a simple allow (nearly every answer) carries: an allow with nothing in it but header
/// operations, so writers can put it on the wire around fixed bytes instead of through serde.
pub(crate) struct SimpleAllow<'a> {
    pub(crate) version: u32,
    pub(crate) request_headers: &'a [HeaderOp],
    pub(crate) response_headers: &'a [HeaderOp],
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) needs_more: bool,
}

impl AgentResponse {
    /// The answer as a [`SimpleAllow`], or `None` if anything but its header operations is not
    /// empty.
    pub(crate) fn as_simple_allow(&self) -> Option<SimpleAllow<'_>> {
        // Every field named, so that a new one cannot be forgotten here.
        let AgentResponse {
            version,
            decision,
            request_headers,
            response_headers,
            routing_metadata,
            audit:
                AuditMetadata {
                    tags,
                    rule_ids,
                    confidence,
                    reason_codes,
                    custom,
                },
            needs_more,
            request_body_mutation,
            response_body_mutation,
            websocket_decision,
            correlation_id,
        } = self;
        let simple = matches!(decision, Decision::Allow)
            && routing_metadata.is_empty()
            && tags.is_empty()
            && rule_ids.is_empty()
            && confidence.is_none()
            && reason_codes.is_empty()
            && custom.is_empty()
            && request_body_mutation.is_none()
            && response_body_mutation.is_none()
            && websocket_decision.is_none();
        simple.then_some(SimpleAllow {
            version: *version,
            request_headers,
            response_headers,
            correlation_id: correlation_id.as_deref(),
            needs_more: *needs_more,
        })
    }
}

/// The bytes and values of a simple allow in one encoding, for writing.
pub(crate) trait Syntax {
    /// Everything up to the version.
    const HEAD: &'static [u8];
    /// From the version to the request's header operations.
    const REQUEST_HEADERS: &'static [u8];
    /// From those to the response's.
    const RESPONSE_HEADERS: &'static [u8];
    /// From those into the audit data's `custom` map.
    const BODY: &'static [u8];
    /// From the end of `custom`'s contents to `needs_more`'s value.
    const NEEDS_MORE: &'static [u8];
    /// Everything after `needs_more`.
    const TAIL: &'static [u8];

    fn put_version(out: &mut BytesMut, version: u32);
    fn put_ops(out: &mut BytesMut, ops: &[HeaderOp]);
    /// `custom`'s contents: the routing id's entry, if any.
    fn put_correlation_id(out: &mut BytesMut, id: Option<&str>);
    fn put_needs_more(out: &mut BytesMut, needs_more: bool);
}

/// Reading a simple allow in one encoding: each method takes one part of the shape, or gives up
/// (`None`) on anything the general decoder must judge.
pub(crate) trait Reader<'a>: Sized {
    type Syntax: Syntax;

    fn new(payload: &'a Bytes) -> Self;
    /// The bytes not read yet.
    fn rest(&self) -> &[u8];
    /// Exactly the fixed bytes `expected`.
    fn fixed(&mut self, expected: &[u8]) -> Option<()>;
    fn version(&mut self) -> Option<u32>;
    /// A list of at most [`MAX_DIRECT_OPS`] operations.
    fn ops(&mut self) -> Option<Vec<HeaderOp>>;
    /// `custom`'s contents: nothing, or the routing id's entry (the id a slice of the payload).
    fn correlation_id(&mut self) -> Option<Option<ByteStr>>;
    fn needs_more(&mut self) -> Option<bool>;
}

/// The simple allow in `payload`, or `None` when the general decoder must decide.
pub(crate) fn read<'a, R: Reader<'a>>(payload: &'a Bytes) -> Option<AgentResponse> {
    let mut r = R::new(payload);
    r.fixed(R::Syntax::HEAD)?;
    let version = r.version()?;
    r.fixed(R::Syntax::REQUEST_HEADERS)?;
    let request_headers = r.ops()?;
    r.fixed(R::Syntax::RESPONSE_HEADERS)?;
    let response_headers = r.ops()?;
    r.fixed(R::Syntax::BODY)?;
    let correlation_id = r.correlation_id()?;
    r.fixed(R::Syntax::NEEDS_MORE)?;
    let needs_more = r.needs_more()?;
    if r.rest() != R::Syntax::TAIL {
        return None;
    }
    let mut response = AgentResponse::new(Decision::Allow);
    response.version = version;
    response.request_headers = request_headers;
    response.response_headers = response_headers;
    response.needs_more = needs_more;
    response.correlation_id = correlation_id;
    Some(response)
}

/// Appends `allow` as serde writes it in `S`'s encoding, byte for byte.
pub(crate) fn write<S: Syntax>(out: &mut BytesMut, allow: &SimpleAllow<'_>) {
    use bytes::BufMut;
    out.put_slice(S::HEAD);
    S::put_version(out, allow.version);
    out.put_slice(S::REQUEST_HEADERS);
    S::put_ops(out, allow.request_headers);
    out.put_slice(S::RESPONSE_HEADERS);
    S::put_ops(out, allow.response_headers);
    out.put_slice(S::BODY);
    S::put_correlation_id(out, allow.correlation_id);
    out.put_slice(S::NEEDS_MORE);
    S::put_needs_more(out, allow.needs_more);
    out.put_slice(S::TAIL);
}
