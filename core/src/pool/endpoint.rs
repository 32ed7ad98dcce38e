//! Agent endpoint strings from the configuration: a Unix socket path, a framed TCP address
//! (`tcp://host:port`) or a gRPC address.
//!
//! The rules, in order: `unix:PATH` is a socket path; `tcp://host:port` is the framed protocol
//! over TCP; `http://host:port` and `https://host:port` are gRPC; a string starting with `/` or
//! `.` (`./agent`, `../run/agent`) or ending with `.sock` is a socket path; any other scheme is
//! refused; what is left is a gRPC `host:port`. Malformed strings fail here with a typed error,
//! not later at connect time, and an explicit scheme wins over the `.sock` suffix rule, since
//! such a string cannot be a socket path anyone meant.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why an endpoint string was rejected.
///
/// ```
/// use agent_protocol_core::pool::{Endpoint, EndpointError};
/// assert_eq!(Endpoint::parse(""), Err(EndpointError::Empty));
/// assert_eq!(Endpoint::parse("localhost"), Err(EndpointError::MissingPort));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The string is empty or whitespace.
    #[error("endpoint is empty")]
    Empty,
    /// `unix:` with nothing (or only whitespace) after it.
    #[error("unix endpoint has an empty path")]
    EmptyUdsPath,
    /// A socket path containing a NUL byte, which no socket path can contain.
    #[error("unix socket path contains a NUL byte")]
    InvalidUdsPath,
    /// A scheme other than `unix`, `tcp`, `http` or `https`.
    #[error("unsupported endpoint scheme {0:?} (expected unix:, tcp://, http:// or https://)")]
    UnsupportedScheme(String),
    /// No host before the port.
    #[error("endpoint has no host")]
    MissingHost,
    /// A host with characters no host name or IP literal can have.
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    /// No `:port` after the host.
    #[error("endpoint has no port")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    /// User info (`user@`), a path, a query or a fragment after the address: gRPC endpoints are
    /// addresses only, and silently dropping these would hide a configuration mistake.
    #[error("unexpected {0:?} after host:port")]
    UnexpectedSuffix(String),
}

/// A parsed agent endpoint.
///
/// ```
/// use agent_protocol_core::pool::Endpoint;
/// use std::path::PathBuf;
///
/// assert_eq!(
///     Endpoint::parse("unix:/run/agent.sock").unwrap(),
///     Endpoint::Uds(PathBuf::from("/run/agent.sock"))
/// );
/// let grpc = Endpoint::parse("agent.internal:50051").unwrap();
/// assert_eq!(grpc, Endpoint::Grpc { uri: "http://agent.internal:50051".into(), tls: false });
/// assert_eq!(grpc.to_string(), "http://agent.internal:50051");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket path.
    Uds(PathBuf),
    /// The framed protocol (the same bytes as on a Unix socket) over TCP: `host:port`, as
    /// written after `tcp://`.
    Tcp(String),
    /// A gRPC server: `uri` is `http://host:port` or `https://host:port`; `tls` is true for
    /// `https`.
    Grpc {
        /// Normalised URI: lower-case scheme, no trailing slash.
        uri: String,
        /// Whether to use TLS.
        tls: bool,
    },
}

impl Endpoint {
    /// Parses an endpoint string (see the module documentation for the rules).
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        if input.trim().is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "unix:") {
            // `unix:///abs/path` is the URI spelling used by gRPC tooling; keep one slash.
            let path = rest.strip_prefix("//").filter(|p| p.starts_with('/'));
            return Self::uds(path.unwrap_or(rest));
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "tcp://") {
            let (host, port) = split_authority(rest)?;
            return Ok(Self::Tcp(format!("{host}:{port}")));
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "http://") {
            return Self::grpc(rest, false);
        }
        if let Some(rest) = strip_prefix_ignore_case(input, "https://") {
            return Self::grpc(rest, true);
        }
        // A relative path spelled as one ("./agent", "../run/agent") is a path whatever its
        // name; nothing else can start that way.
        let path_like = input.starts_with(['/', '.']) && !input.starts_with(".:");
        if path_like || input.ends_with(".sock") {
            return Self::uds(input);
        }
        if let Some((scheme, _)) = input.split_once("://") {
            return Err(EndpointError::UnsupportedScheme(scheme.to_owned()));
        }
        Self::grpc(input, false)
    }

    fn uds(path: &str) -> Result<Self, EndpointError> {
        if path.trim().is_empty() {
            return Err(EndpointError::EmptyUdsPath);
        }
        if path.contains('\0') {
            return Err(EndpointError::InvalidUdsPath);
        }
        Ok(Self::Uds(PathBuf::from(path)))
    }

    fn grpc(authority_and_rest: &str, tls: bool) -> Result<Self, EndpointError> {
        let (host, port_number) = split_authority(authority_and_rest)?;
        let scheme = if tls { "https" } else { "http" };
        Ok(Self::Grpc {
            uri: format!("{scheme}://{host}:{port_number}"),
            tls,
        })
    }

    /// The socket path, if this is a UDS endpoint.
    pub fn uds_path(&self) -> Option<&Path> {
        match self {
            Self::Uds(p) => Some(p),
            Self::Tcp(_) | Self::Grpc { .. } => None,
        }
    }

    /// Whether this is a UDS endpoint.
    pub fn is_uds(&self) -> bool {
        matches!(self, Self::Uds(_))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// The validated host and port of an address with nothing after it but an optional "/".
fn split_authority(authority_and_rest: &str) -> Result<(&str, u16), EndpointError> {
    let end = authority_and_rest
        .find(['/', '?', '#'])
        .unwrap_or(authority_and_rest.len());
    let (authority, rest) = authority_and_rest.split_at(end);
    if !rest.is_empty() && rest != "/" {
        return Err(EndpointError::UnexpectedSuffix(rest.to_owned()));
    }
    if authority.contains('@') {
        return Err(EndpointError::UnexpectedSuffix(authority.to_owned()));
    }
    let (host, port) = split_host_port(authority)?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(EndpointError::InvalidPort(port.to_owned())),
    }
}

/// Splits `host:port`, accepting `[v6]:port`; validates the host.
fn split_host_port(authority: &str) -> Result<(&str, &str), EndpointError> {
    if authority.is_empty() {
        return Err(EndpointError::MissingHost);
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inner, after)) = bracketed.split_once(']') else {
            return Err(EndpointError::InvalidHost(authority.to_owned()));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(EndpointError::InvalidHost(authority.to_owned()));
        }
        let host = authority.get(..inner.len() + 2).unwrap_or(authority);
        return match after.strip_prefix(':') {
            Some(port) if !port.is_empty() => Ok((host, port)),
            _ if after.is_empty() || after == ":" => Err(EndpointError::MissingPort),
            _ => Err(EndpointError::InvalidHost(authority.to_owned())),
        };
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(EndpointError::MissingPort);
    };
    if host.is_empty() {
        return Err(EndpointError::MissingHost);
    }
    if port.is_empty() {
        return Err(EndpointError::MissingPort);
    }
    let valid_host = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid_host {
        // Includes an unbracketed IPv6 address, where the port would be ambiguous.
        return Err(EndpointError::InvalidHost(host.to_owned()));
    }
    Ok((host, port))
}

impl fmt::Display for Endpoint {
    /// `unix:<path>` or the gRPC URI; parsing the output gives the same endpoint back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A path starting with "//" gets an extra "//" because `parse` strips one from
            // `unix:///...`; this keeps `parse(display(e)) == e`.
            Self::Uds(path) => {
                let shown = path.display().to_string();
                let extra = if shown.starts_with("//") { "//" } else { "" };
                write!(f, "unix:{extra}{shown}")
            }
            Self::Tcp(address) => write!(f, "tcp://{address}"),
            Self::Grpc { uri, .. } => f.write_str(uri),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uds(p: &str) -> Result<Endpoint, EndpointError> {
        Ok(Endpoint::Uds(PathBuf::from(p)))
    }

    fn grpc(uri: &str, tls: bool) -> Result<Endpoint, EndpointError> {
        Ok(Endpoint::Grpc {
            uri: uri.to_owned(),
            tls,
        })
    }

    #[test]
    fn table() {
        use EndpointError::*;
        let cases: &[(&str, Result<Endpoint, EndpointError>)] = &[
            ("unix:/tmp/a.sock", uds("/tmp/a.sock")),
            ("unix:relative/a", uds("relative/a")),
            ("UNIX:/tmp/a", uds("/tmp/a")),
            ("unix:///tmp/a.sock", uds("/tmp/a.sock")),
            ("/var/run/agent", uds("/var/run/agent")),
            ("agent.sock", uds("agent.sock")),
            ("./dir/agent.sock", uds("./dir/agent.sock")),
            ("./waf", uds("./waf")),
            ("../run/waf", uds("../run/waf")),
            (
                "tcp://127.0.0.1:7000",
                Ok(Endpoint::Tcp("127.0.0.1:7000".into())),
            ),
            (
                "TCP://agent.internal:7000/",
                Ok(Endpoint::Tcp("agent.internal:7000".into())),
            ),
            ("tcp://[::1]:7000", Ok(Endpoint::Tcp("[::1]:7000".into()))),
            ("tcp://h:7000/x", Err(UnexpectedSuffix("/x".into()))),
            ("tcp://h", Err(MissingPort)),
            (
                "http://localhost:50051",
                grpc("http://localhost:50051", false),
            ),
            (
                "http://localhost:50051/",
                grpc("http://localhost:50051", false),
            ),
            (
                "HTTPS://agent.example.com:443",
                grpc("https://agent.example.com:443", true),
            ),
            ("localhost:50051", grpc("http://localhost:50051", false)),
            ("127.0.0.1:9000", grpc("http://127.0.0.1:9000", false)),
            ("[::1]:50051", grpc("http://[::1]:50051", false)),
            (
                "https://[2001:db8::1]:8443",
                grpc("https://[2001:db8::1]:8443", true),
            ),
            (
                "http://host:1/x.sock",
                Err(UnexpectedSuffix("/x.sock".into())),
            ),
            ("", Err(Empty)),
            ("   ", Err(Empty)),
            ("unix:", Err(EmptyUdsPath)),
            ("unix:/a\0b", Err(InvalidUdsPath)),
            ("localhost", Err(MissingPort)),
            ("localhost:", Err(MissingPort)),
            ("http://localhost", Err(MissingPort)),
            ("http://", Err(MissingHost)),
            (":50051", Err(MissingHost)),
            ("http://:80", Err(MissingHost)),
            ("host:0", Err(InvalidPort("0".into()))),
            ("host:65536", Err(InvalidPort("65536".into()))),
            ("host:+80", Err(InvalidPort("+80".into()))),
            ("host:http", Err(InvalidPort("http".into()))),
            ("::1:80", Err(InvalidHost("::1".into()))),
            ("[::1]", Err(MissingPort)),
            ("[zz]:80", Err(InvalidHost("[zz]:80".into()))),
            ("[::1]x:80", Err(InvalidHost("[::1]x:80".into()))),
            ("bad host:80", Err(InvalidHost("bad host".into()))),
            ("http://u@h:80", Err(UnexpectedSuffix("u@h:80".into()))),
            ("http://h:80/path", Err(UnexpectedSuffix("/path".into()))),
            ("http://h:80?q", Err(UnexpectedSuffix("?q".into()))),
            ("ftp://h:21", Err(UnsupportedScheme("ftp".into()))),
            ("héllo:80", Err(InvalidHost("héllo".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(&Endpoint::parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "unix:/tmp/a.sock",
            "/abs/path",
            "x.sock",
            "h:1",
            "https://[::1]:2",
            "///tmp/x",
            "unix://x",
        ] {
            let e = Endpoint::parse(s).unwrap();
            assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e);
        }
        assert!(Endpoint::parse("/a").unwrap().is_uds());
        assert_eq!("h:1".parse::<Endpoint>().unwrap().uds_path(), None::<&Path>);
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(e) = Endpoint::parse(&s) {
                prop_assert_eq!(Endpoint::parse(&e.to_string()), Ok(e));
            }
        }
    }
}
