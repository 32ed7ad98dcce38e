//! Every error says whose fault it is, and keeps its cause: one assertion per source, so a
//! reclassification is a visible, deliberate change.

use std::io;
use std::time::Duration;

use agent_protocol_core::agent::{RequestId, RespondError, SendError};
use agent_protocol_core::encoding::{DecodeError, EncodeError};
use agent_protocol_core::frame::{FrameError, FrameType, PayloadTooLarge};
use agent_protocol_core::handshake::HandshakeError;
use agent_protocol_core::registration::RegistrationError;
use agent_protocol_core::{
    CancelReason, ConnectionError, Encoding, Fault, RequestError, SubmitError,
};

fn decode_error() -> DecodeError {
    DecodeError {
        frame_type: FrameType::AgentResponse,
        encoding: Encoding::Json,
        message: "bad".into(),
        limit: None,
    }
}

fn encode_error() -> EncodeError {
    EncodeError::TooLarge(PayloadTooLarge { len: 2, max: 1 })
}

#[test]
fn connection_errors_blame_who_acted() {
    use ConnectionError as C;
    let cases = [
        // What the peer sent.
        (C::Frame(FrameError::ZeroLength), Fault::Peer),
        (C::Malformed(decode_error()), Fault::Peer),
        (
            C::Handshake(HandshakeError::VersionMismatch { peer: vec![1] }),
            Fault::Peer,
        ),
        (
            C::Handshake(HandshakeError::Malformed("{".into())),
            Fault::Peer,
        ),
        (
            C::Handshake(HandshakeError::Rejected("no".into())),
            Fault::Peer,
        ),
        (
            C::Registration(RegistrationError::Rejected("no".into())),
            Fault::Peer,
        ),
        (
            C::Registration(RegistrationError::AuthFailed("a".into())),
            Fault::Peer,
        ),
        (
            C::Registration(RegistrationError::Malformed("{".into())),
            Fault::Peer,
        ),
        // Deadlines.
        (
            C::Handshake(HandshakeError::Timeout(Duration::from_secs(1))),
            Fault::Timeout,
        ),
        (
            C::Registration(RegistrationError::Timeout(Duration::from_secs(1))),
            Fault::Timeout,
        ),
        (C::PingTimeout(Duration::from_secs(5)), Fault::Timeout),
        // Our own doing.
        (C::Encode(encode_error()), Fault::Local),
        (
            C::Registration(RegistrationError::PoolRefused("full".into())),
            Fault::Local,
        ),
        // The transport ended.
        (C::PeerClosed, Fault::Closed),
        (C::LocalClose, Fault::Closed),
        (
            io::Error::from(io::ErrorKind::ConnectionReset).into(),
            Fault::Closed,
        ),
    ];
    for (error, fault) in cases {
        assert_eq!(error.fault(), fault, "{error:?}");
    }
}

#[test]
fn io_errors_keep_their_kind() {
    let error = ConnectionError::from(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
    assert!(
        matches!(&error, ConnectionError::Io { kind: io::ErrorKind::ConnectionReset, message } if message == "reset"),
        "{error:?}"
    );
    assert!(matches!(
        ConnectionError::transport("stream closed"),
        ConnectionError::Io {
            kind: io::ErrorKind::Other,
            ..
        }
    ));
}

#[test]
fn request_submit_and_answer_errors_blame_who_acted() {
    let requests = [
        (
            RequestError::Timeout(Duration::from_secs(1)),
            Fault::Timeout,
        ),
        (
            RequestError::Cancelled(CancelReason::ClientDisconnect),
            Fault::Local,
        ),
        (
            RequestError::ConnectionClosed(ConnectionError::PeerClosed),
            Fault::Closed,
        ),
        (RequestError::MalformedResponse(decode_error()), Fault::Peer),
    ];
    for (error, fault) in requests {
        assert_eq!(error.fault(), fault, "{error:?}");
    }
    let submits = [
        (SubmitError::NotReady, Fault::Closed),
        (SubmitError::TooManyInFlight { limit: 1 }, Fault::Limit),
        (
            SubmitError::SendBufferFull {
                buffered: 2,
                limit: 1,
            },
            Fault::Limit,
        ),
        (SubmitError::EmptyCorrelationId, Fault::Local),
        (SubmitError::Encode(encode_error()), Fault::Local),
    ];
    for (error, fault) in submits {
        assert_eq!(error.fault(), fault, "{error:?}");
    }
    let id = RequestId::from_raw(3);
    assert_eq!(RespondError::UnknownRequest(id).fault(), Fault::Local);
    assert_eq!(
        RespondError::Closed(ConnectionError::LocalClose).fault(),
        Fault::Closed
    );
    assert_eq!(SendError::NotEstablished.fault(), Fault::Closed);
}
