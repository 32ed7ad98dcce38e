//! What the load sends: by default a browser-like request, headers shaped like a real Chrome
//! navigation (20 headers, about 1 KB on the wire); for `bench`, a [`RequestTemplate`] the user
//! can change (method, path, headers, body); for `demo`, a [`Mix`] with a share of POSTs with
//! bodies and a share that the demo rules block.

use agent_protocol_core::{
    BodyChunk, ByteStr, Headers, RequestBodyChunkEvent, RequestHeadersEvent, RequestMetadata,
};
use bytes::Bytes;

/// The 20 headers of the reference vector `request_headers_browser_20_headers`.
const BROWSER_HEADERS: [(&str, &str); 20] = [
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-US,en;q=0.9"),
    ("cache-control", "max-age=0"),
    ("connection", "keep-alive"),
    ("cookie", "session_id=3f2a9c1e7b4d4e8f9a0b1c2d3e4f5a6b; theme=dark; _ga=GA1.2.1234567890.1700000000"),
    ("dnt", "1"),
    ("host", "www.example.com"),
    ("if-none-match", "\"5e8f-61a2b3c4d5e6f\""),
    ("priority", "u=0, i"),
    ("referer", "https://www.example.com/shop/electronics/audio"),
    ("sec-ch-ua", "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\""),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-user", "?1"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"),
];

/// How the demo decides what request `i` is.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// One request in this many targets `/admin` (blocked by the demo rules).
    pub admin_every: u64,
    /// One request in this many is a POST with a body.
    pub body_every: u64,
    /// One body in this many carries an SQL injection (blocked).
    pub sqli_every: u64,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// Chunk size in bytes.
    pub chunk_bytes: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            admin_every: 20,
            body_every: 10,
            sqli_every: 5,
            body_bytes: 8 * 1024,
            chunk_bytes: 4 * 1024,
        }
    }
}

/// One request of the workload.
#[derive(Debug)]
pub struct Request {
    /// Its headers event.
    pub headers: RequestHeadersEvent,
    /// Its body chunks, in order (empty for GETs).
    pub body: Vec<RequestBodyChunkEvent>,
}

/// The browser-like RequestHeaders event for `correlation_id` and `uri`.
pub fn browser_headers(correlation_id: &str, method: &str, uri: &str) -> RequestHeadersEvent {
    headers_event(correlation_id, method, uri, BROWSER_HEADERS)
}

/// A RequestHeaders event with the browser-like metadata and the given headers.
fn headers_event<'a>(
    correlation_id: &str,
    method: &str,
    uri: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str), IntoIter: Clone>,
) -> RequestHeadersEvent {
    // Per-request text is copied, as a proxy copies it from its request; what a proxy knows
    // from its configuration (server, route, upstream, TLS) it keeps as shared strings.
    let metadata = RequestMetadata {
        correlation_id: correlation_id.to_owned().into(),
        request_id: format!("req-{correlation_id}").into(),
        client_ip: "203.0.113.42".into(),
        client_port: 54321,
        server_name: Some(ByteStr::from_static("www.example.com")),
        protocol: ByteStr::from_static("HTTP/1.1"),
        tls_version: Some(ByteStr::from_static("TLSv1.3")),
        tls_cipher: Some(ByteStr::from_static("TLS_AES_128_GCM_SHA256")),
        route_id: Some(ByteStr::from_static("shop")),
        upstream_id: Some(ByteStr::from_static("shop-backend")),
        timestamp: "2026-01-15T12:34:56.789Z".into(),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    // As a proxy builds it from the request it holds: all header text copied into one buffer.
    let headers = Headers::copy_from(headers);
    RequestHeadersEvent::new(metadata, method, uri, headers)
}

/// Splits `body` into chunk events for `correlation_id`.
pub fn body_chunks(
    correlation_id: &str,
    body: &Bytes,
    chunk_bytes: usize,
) -> Vec<RequestBodyChunkEvent> {
    let chunk_bytes = chunk_bytes.max(1);
    let total = body.len();
    let count = total.div_ceil(chunk_bytes).max(1);
    (0..count)
        .map(|i| {
            let start = i * chunk_bytes;
            let end = (start + chunk_bytes).min(total);
            RequestBodyChunkEvent(BodyChunk {
                correlation_id: correlation_id.to_owned().into(),
                data: body.slice(start..end),
                is_last: i + 1 == count,
                total_size: Some(total as u64),
                chunk_index: i as u32,
                bytes_transferred: end as u64,
            })
        })
        .collect()
}

/// The request `bench` sends, every time (with its own correlation id): the browser-like GET
/// unless changed, in the spirit of curl's flags: `-H 'name: value'` replaces the headers of
/// that name or adds one, `-H 'name:'` removes them, and a body makes the default method POST.
///
/// ```
/// use agentctl::workload::RequestTemplate;
/// let mut t = RequestTemplate::browser();
/// t.set_header("user-agent: sqlmap/1.8").unwrap();
/// t.set_header("cookie:").unwrap();
/// t.set_body(b"id=1' OR 1=1 --".to_vec().into(), 4096);
/// assert_eq!(t.method, "POST");
/// let r = t.request("c1");
/// assert_eq!(r.headers.headers.get("user-agent").unwrap().next(), Some("sqlmap/1.8"));
/// assert!(r.headers.headers.get("cookie").is_none());
/// assert_eq!(r.body.len(), 1);
/// assert!(t.set_header("no colon").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body, sent as chunks after the headers (empty: none).
    pub body: Bytes,
    /// Chunk size for the body.
    pub chunk_bytes: usize,
    method_set: bool,
}

impl RequestTemplate {
    /// The browser-like GET of a product page, 20 headers, no body.
    pub fn browser() -> Self {
        Self {
            method: "GET".into(),
            uri: "/shop/electronics/audio/headphones?brand=acme&color=blue&p=2".into(),
            headers: BROWSER_HEADERS
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::new(),
            chunk_bytes: 64 * 1024,
            method_set: false,
        }
    }

    /// Sets the method (it no longer follows the body).
    pub fn set_method(&mut self, method: &str) -> Result<(), String> {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(format!("invalid method {method:?}"));
        }
        self.method = method.to_owned();
        self.method_set = true;
        Ok(())
    }

    /// Sets the path (with its query), which must start with `/` (or be `*`).
    pub fn set_path(&mut self, path: &str) -> Result<(), String> {
        if !(path.starts_with('/') || path == "*") || path.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "invalid path {path:?}: it must start with / and hold no control characters"
            ));
        }
        path.clone_into(&mut self.uri);
        Ok(())
    }

    /// Applies `name: value` (replace or add) or `name:` (remove), as curl's `-H` does.
    pub fn set_header(&mut self, spec: &str) -> Result<(), String> {
        let Some((name, value)) = spec.split_once(':') else {
            return Err(format!("header {spec:?} is not `name: value`"));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("invalid header name {name:?}"));
        }
        let value = value.trim();
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!(
                "header {name} has a control character in its value"
            ));
        }
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        if !value.is_empty() {
            self.headers.push((name, value.to_owned()));
        }
        Ok(())
    }

    /// Sets the body and its chunk size; unless a method was set, the method becomes POST
    /// (GET for an empty body).
    pub fn set_body(&mut self, body: Bytes, chunk_bytes: usize) {
        self.body = body;
        self.chunk_bytes = chunk_bytes.max(1);
        if !self.method_set {
            self.method = if self.body.is_empty() { "GET" } else { "POST" }.into();
        }
    }

    /// The request with correlation id `cid`: its headers event and its body chunks (slices of
    /// the template's body, not copies).
    pub fn request(&self, cid: &str) -> Request {
        let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        Request {
            headers: headers_event(cid, &self.method, &self.uri, headers),
            body: if self.body.is_empty() {
                Vec::new()
            } else {
                body_chunks(cid, &self.body, self.chunk_bytes)
            },
        }
    }
}

/// An RFC 9110 `tchar`: what method and header names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Mix {
    /// Request number `i` (deterministic), with correlation id `cid`.
    pub fn request(&self, i: u64, cid: &str) -> Request {
        let admin = self.admin_every > 0 && i % self.admin_every == self.admin_every - 1;
        let with_body =
            self.body_every > 0 && i.is_multiple_of(self.body_every) && self.body_bytes > 0;
        if admin {
            return Request {
                headers: browser_headers(cid, "GET", "/admin/settings"),
                body: Vec::new(),
            };
        }
        if !with_body {
            return Request {
                headers: browser_headers(
                    cid,
                    "GET",
                    "/shop/electronics/audio/headphones?brand=acme&color=blue&p=2",
                ),
                body: Vec::new(),
            };
        }
        let sqli = self.sqli_every > 0 && (i / self.body_every.max(1)) % self.sqli_every == 1;
        let mut body = vec![b'a'; self.body_bytes];
        if sqli {
            let needle = b"name=x' OR 1=1 --";
            // Inside the first chunk, so the agent sees it whole whatever the chunk size.
            let at = 16.min(self.body_bytes.saturating_sub(needle.len()));
            let end = (at + needle.len()).min(body.len());
            body[at..end].copy_from_slice(&needle[..end - at]);
        }
        let body = Bytes::from(body);
        Request {
            headers: browser_headers(cid, "POST", "/shop/checkout"),
            body: body_chunks(cid, &body, self.chunk_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_request_is_about_one_kilobyte_with_twenty_headers() {
        let h = browser_headers("c1", "GET", "/shop");
        assert_eq!(h.headers.len(), 20);
        let json = serde_json::to_vec(&h).unwrap();
        assert!((900..1600).contains(&json.len()), "{}", json.len());
    }

    #[test]
    fn chunks_cover_the_body_in_order() {
        let body = Bytes::from(vec![1u8; 10_000]);
        let chunks = body_chunks("c", &body, 4096);
        assert_eq!(chunks.len(), 3);
        assert!(chunks[2].0.is_last);
        assert_eq!(chunks.iter().map(|c| c.0.data.len()).sum::<usize>(), 10_000);
        assert_eq!(chunks[1].0.chunk_index, 1);
    }

    #[test]
    fn mix_contains_every_kind() {
        let mix = Mix::default();
        let reqs: Vec<_> = (0..100).map(|i| mix.request(i, &format!("c{i}"))).collect();
        assert!(reqs.iter().any(|r| r.headers.uri.starts_with("/admin")));
        assert!(reqs.iter().any(|r| !r.body.is_empty()));
        assert!(reqs.iter().any(|r| r.body.iter().any(|c| c
            .0
            .data
            .windows(8)
            .any(|w| w == b"' OR 1=1"))));
    }
}
