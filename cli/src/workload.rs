//! The browser-like workload used by `demo` and `bench`: request headers shaped like a real
//! Chrome navigation (20 headers, about 1 KB on the wire), a share of POSTs with bodies, and a
//! share that the demo rules block.

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
    let headers = Headers::copy_from(BROWSER_HEADERS);
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
