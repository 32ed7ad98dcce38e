//! TLS for the gRPC transport (feature `tls`, rustls through tonic).
//!
//! The agent presents a certificate ([`ServerTls`]); the proxy verifies it against a CA it is
//! given ([`ClientTls`]) and the host name of the endpoint (or [`ClientTls::domain`]). For mutual
//! TLS the agent names the CA of its clients ([`ServerTls::client_ca`]) and the proxy presents
//! its own certificate ([`ClientTls::identity`]); a connection without an acceptable certificate
//! fails during the TLS handshake. Everything is PEM.
//!
//! ```no_run
//! # async fn demo(ca: Vec<u8>, cert: Vec<u8>, key: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use agent_protocol_tokio::client::{AgentClient, ClientConfig};
//! use agent_protocol_tokio::grpc::tls::{ClientTls, ServerTls};
//! use agent_protocol_tokio::grpc::{GrpcConnector, ServeGrpc};
//! use agent_protocol_tokio::server::{AgentHandler, AgentServer, ServerConfig};
//!
//! struct AllowAll;
//! impl AgentHandler for AllowAll {}
//! let server = AgentServer::new(AllowAll, ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50443").await?;
//! let tls = ServerTls::new(cert, key);
//! tokio::spawn(async move { server.serve_grpc_tls(listener, tls).await });
//!
//! let tls = ClientTls::new(ca).domain("localhost");
//! let config = ClientConfig::default().with_connector(GrpcConnector::new().with_tls(tls));
//! let client = AgentClient::connect("https://127.0.0.1:50443", config).await?;
//! # drop(client); Ok(()) }
//! ```

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The agent's TLS settings.
#[derive(Clone, Debug)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Present this certificate chain and private key (PEM).
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        }
    }

    /// Require every client to present a certificate signed by this CA (PEM): mutual TLS.
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    pub(crate) fn into_tonic(self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(self.cert_pem, self.key_pem));
        match self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// The proxy's TLS settings for `https://` agent endpoints.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    domain: Option<String>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Verify the agent's certificate against this CA (PEM).
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            domain: None,
            identity: None,
        }
    }

    /// The name the agent's certificate must carry, when it differs from the endpoint's host
    /// (for instance an IP address endpoint and a certificate for `localhost`).
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Present this certificate chain and private key (PEM) to the agent: mutual TLS.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    pub(crate) fn into_tonic(self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem));
        if let Some(domain) = self.domain {
            config = config.domain_name(domain);
        }
        if let Some((cert, key)) = self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}
