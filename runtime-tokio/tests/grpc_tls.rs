//! gRPC over TLS and mutual TLS on loopback, with certificates generated here (rcgen).
#![cfg(feature = "tls")]

mod grpc_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_protocol_tokio::client::{AgentClient, ClientConfig, ClientError};
use agent_protocol_tokio::grpc::tls::{ClientTls, ServerTls};
use agent_protocol_tokio::grpc::{GrpcConnector, ServeGrpc};
use agent_protocol_tokio::server::{AgentServer, ServerConfig};
use grpc_support::{headers_event, EchoAgent};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that can sign server and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `name`, for a server or a client.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn serve_tls(tls: ServerTls) -> SocketAddr {
    let server =
        AgentServer::with_shared_handler(Arc::new(EchoAgent::default()), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve_grpc_tls(listener, tls).await });
    addr
}

fn quick() -> ClientConfig {
    let mut config = ClientConfig::default().with_connect_timeout(Duration::from_secs(3));
    config.connection.handshake.timeout = Duration::from_secs(3);
    config
}

fn client_config(tls: ClientTls) -> ClientConfig {
    quick().with_connector(GrpcConnector::new().with_tls(tls))
}

async fn connect_and_ask(addr: SocketAddr, config: ClientConfig) -> Result<(), ClientError> {
    let client = AgentClient::connect(&format!("https://{addr}"), config).await?;
    let r = client.send(headers_event("tls-1", "/block")).await?;
    assert_eq!(r.decision.kind(), "block");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_succeeds_and_a_wrong_ca_is_rejected() {
    let ca = Ca::new("agents CA");
    let (cert, key) = ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let addr = serve_tls(ServerTls::new(cert, key)).await;

    connect_and_ask(
        addr,
        client_config(ClientTls::new(ca.pem.clone()).domain("localhost")),
    )
    .await
    .expect("TLS with the right CA");

    let other = Ca::new("someone else");
    let r = connect_and_ask(
        addr,
        client_config(ClientTls::new(other.pem).domain("localhost")),
    )
    .await;
    assert!(
        r.is_err(),
        "a certificate from an untrusted CA must be refused"
    );

    // Right CA, wrong name.
    let r = connect_and_ask(
        addr,
        client_config(ClientTls::new(ca.pem.clone()).domain("not-the-agent.example")),
    )
    .await;
    assert!(r.is_err(), "a certificate for another name must be refused");

    // Plain HTTP/2 to a TLS port does not get through either.
    assert!(AgentClient::connect(&addr.to_string(), quick())
        .await
        .is_err());

    // And https without TLS settings is refused before connecting.
    let r = AgentClient::connect(&format!("https://{addr}"), ClientConfig::default()).await;
    assert!(matches!(r, Err(ClientError::Connect { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_right_ca() {
    let server_ca = Ca::new("agents CA");
    let client_ca = Ca::new("proxies CA");
    let (cert, key) = server_ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let addr = serve_tls(ServerTls::new(cert, key).client_ca(client_ca.pem.clone())).await;
    let base = || ClientTls::new(server_ca.pem.clone()).domain("localhost");

    let (ccert, ckey) = client_ca.issue("proxy-1", ExtendedKeyUsagePurpose::ClientAuth);
    connect_and_ask(addr, client_config(base().identity(ccert, ckey)))
        .await
        .expect("mTLS with a certificate from the client CA");

    let r = connect_and_ask(addr, client_config(base())).await;
    assert!(r.is_err(), "no client certificate must be refused");

    let rogue = Ca::new("rogue CA");
    let (rcert, rkey) = rogue.issue("proxy-1", ExtendedKeyUsagePurpose::ClientAuth);
    let r = connect_and_ask(addr, client_config(base().identity(rcert, rkey))).await;
    assert!(
        r.is_err(),
        "a client certificate from another CA must be refused"
    );
}
