//! The direct RequestHeaders reader, written once over the two encodings' syntax.
//!
//! The hottest message is read straight from the payload into the event, without serde, by
//! [`read_event`]: which fields there are, what each holds, the limits counted as the general
//! decoder counts them, and the event built at the end live here; an encoding supplies only its
//! syntax ([`Syntax`]: `core/src/json_request_headers.rs`, `core/src/msgpack/request_headers.rs`).
//!
//! A reader takes only the shapes our proxy and the reference send, within every limit, and
//! gives up (`None`) on anything else: another type where a string was expected, a repeated or
//! unknown field, a limit reached, malformed or trailing bytes. The caller then decodes the
//! payload the general way, which reaches the decision, so every decision is the general
//! decoder's; tests/tests/fast_path.rs and the codec fuzz targets hold the two to that.

use crate::byte_str::ByteStr;
use crate::event::{RequestHeadersEvent, RequestMetadata};
use bytes::Bytes;

use crate::headers::{ExactBuilder, Headers, Span};
use crate::limits::MessageLimits;

/// What a direct reader counts, as the general decoder counts it: elements (array items and map
/// entries, see [`crate::element_count`]) against the message's budget, and header values and
/// bytes against the header limits. Any limit reached gives up.
pub(crate) struct Budget<'a> {
    limits: &'a MessageLimits,
    elements: usize,
    header_values: usize,
    header_bytes: usize,
}

impl<'a> Budget<'a> {
    pub(crate) fn new(limits: &'a MessageLimits) -> Self {
        Self {
            limits,
            elements: 0,
            header_values: 0,
            header_bytes: 0,
        }
    }

    /// Counts `n` elements.
    #[inline]
    pub(crate) fn count(&mut self, n: usize) -> Option<()> {
        self.elements = self.elements.saturating_add(n);
        (self.elements <= self.limits.max_elements).then_some(())
    }

    /// Counts header values and bytes of header names and values.
    #[inline]
    pub(crate) fn charge(&mut self, values: usize, bytes: usize) -> Option<()> {
        self.header_values += values;
        self.header_bytes += bytes;
        let verdict = self
            .limits
            .headers
            .check(self.header_values, self.header_bytes);
        verdict.ok()
    }
}

/// One encoding's syntax, as the direct reader needs it. Every method reads one value at the
/// current position and gives up (`None`) on anything it does not take.
pub(crate) trait Syntax<'a>: Sized {
    fn budget(&mut self) -> &mut Budget<'a>;

    /// The payload being read, which header text is kept as ranges of.
    fn payload(&self) -> &'a Bytes;

    /// Walks a map whose keys are field names (plain text), counting its entries; `field` reads
    /// the value of each.
    fn fields(&mut self, field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()>;

    /// Walks a map of header names to their values, counting its entries: each name read by
    /// [`Syntax::header_name`], then its values by [`Syntax::values`].
    fn header_map(&mut self, headers: &mut ExactBuilder) -> Option<()>;

    /// Header values: an array of strings (counted), or one string; each read by
    /// [`Syntax::value`].
    fn values(&mut self, headers: &mut ExactBuilder) -> Option<()>;

    fn text(&mut self) -> Option<ByteStr>;

    /// A header name or value: a span of the payload, or of the headers' own buffer where the
    /// text had to be rewritten.
    fn header_text(&mut self, headers: &mut ExactBuilder) -> Option<Span>;

    /// A header name, charged to the header limits; the values that follow are its.
    #[inline(always)]
    fn header_name(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        let name = self.header_text(headers)?;
        self.budget().charge(0, name.len())?;
        headers.name(name);
        Some(())
    }

    /// One header value, charged to the header limits.
    #[inline(always)]
    fn value(&mut self, headers: &mut ExactBuilder) -> Option<()> {
        let value = self.header_text(headers)?;
        self.budget().charge(1, value.len())?;
        headers.value(value);
        Some(())
    }

    /// A string or null.
    fn optional_text(&mut self) -> Option<Option<ByteStr>>;

    fn port(&mut self) -> Option<u16>;

    /// The metadata: a map of its fields; a syntax may take another form too (MessagePack, the
    /// reference's positional array).
    fn metadata(&mut self) -> Option<RequestMetadata> {
        read_metadata_fields(self)
    }
}

/// The metadata as a map of its fields.
pub(crate) fn read_metadata_fields<'a, S: Syntax<'a>>(s: &mut S) -> Option<RequestMetadata> {
    let mut fields = MetadataFields::default();
    s.fields(|s, name| fields.read(s, MetadataField::named(name)?))?;
    fields.finish()
}

/// The event: a map of its five fields.
pub(crate) fn read_event<'a, S: Syntax<'a>>(s: &mut S) -> Option<RequestHeadersEvent> {
    let (mut correlation_id, mut metadata, mut method, mut uri, mut headers) =
        (None, None, None, None, None);
    s.fields(|s, name| match name {
        b"correlation_id" => once(&mut correlation_id, s.text()?),
        b"metadata" => once(&mut metadata, s.metadata()?),
        b"method" => once(&mut method, s.text()?),
        b"uri" => once(&mut uri, s.text()?),
        b"headers" => once(&mut headers, read_headers(s)?),
        _ => None,
    })?;
    Some(RequestHeadersEvent {
        // Filled from the metadata by `Event::normalize` when absent, as by the general decoder.
        correlation_id: correlation_id.unwrap_or_default(),
        metadata: metadata?,
        method: method?,
        uri: uri?,
        headers: headers?,
    })
}

fn read_headers<'a, S: Syntax<'a>>(s: &mut S) -> Option<Headers> {
    let mut headers = ExactBuilder::over(s.payload().clone(), 24);
    s.header_map(&mut headers)?;
    Some(headers.finish())
}

/// Fills an empty slot; a repeated field gives up.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// A field of [`RequestMetadata`] and the kind of value it holds.
#[derive(Clone, Copy)]
pub(crate) enum MetadataField {
    /// A required string: slot in [`MetadataFields::text`].
    Text(usize),
    /// An optional string: slot in [`MetadataFields::optional`].
    Optional(usize),
    Port,
}

impl MetadataField {
    /// The fields in declaration order: the reference's positional array holds them so, the
    /// last (traceparent) left out when absent.
    pub(crate) const POSITIONAL: [MetadataField; 12] = [
        Self::Text(0),     // correlation_id
        Self::Text(1),     // request_id
        Self::Text(2),     // client_ip
        Self::Port,        // client_port
        Self::Optional(0), // server_name
        Self::Text(3),     // protocol
        Self::Optional(1), // tls_version
        Self::Optional(2), // tls_cipher
        Self::Optional(3), // route_id
        Self::Optional(4), // upstream_id
        Self::Text(4),     // timestamp
        Self::Optional(5), // traceparent
    ];

    #[inline(always)]
    fn named(name: &[u8]) -> Option<Self> {
        let at = match name {
            b"correlation_id" => 0,
            b"request_id" => 1,
            b"client_ip" => 2,
            b"client_port" => 3,
            b"server_name" => 4,
            b"protocol" => 5,
            b"tls_version" => 6,
            b"tls_cipher" => 7,
            b"route_id" => 8,
            b"upstream_id" => 9,
            b"timestamp" => 10,
            b"traceparent" => 11,
            _ => return None,
        };
        Some(Self::POSITIONAL[at])
    }
}

/// The metadata's fields as they are read, in any order, each at most once.
#[derive(Default)]
pub(crate) struct MetadataFields {
    text: [Option<ByteStr>; 5],
    optional: [Option<Option<ByteStr>>; 6],
    port: Option<u16>,
}

impl MetadataFields {
    /// Reads the value of `field`.
    #[inline(always)]
    pub(crate) fn read<'a, S: Syntax<'a>>(
        &mut self,
        s: &mut S,
        field: MetadataField,
    ) -> Option<()> {
        match field {
            MetadataField::Text(i) => once(&mut self.text[i], s.text()?),
            MetadataField::Optional(i) => once(&mut self.optional[i], s.optional_text()?),
            MetadataField::Port => once(&mut self.port, s.port()?),
        }
    }

    /// The metadata, if every required field was read; absent options are `None`.
    pub(crate) fn finish(self) -> Option<RequestMetadata> {
        let [correlation_id, request_id, client_ip, protocol, timestamp] = self.text;
        let [server_name, tls_version, tls_cipher, route_id, upstream_id, traceparent] =
            self.optional;
        Some(RequestMetadata {
            correlation_id: correlation_id?,
            request_id: request_id?,
            client_ip: client_ip?,
            client_port: self.port?,
            server_name: server_name.flatten(),
            protocol: protocol?,
            tls_version: tls_version.flatten(),
            tls_cipher: tls_cipher.flatten(),
            route_id: route_id.flatten(),
            upstream_id: upstream_id.flatten(),
            timestamp: timestamp?,
            traceparent: traceparent.flatten(),
        })
    }
}
