//! Replacing a socket file only when it is stale, on both runtime adapters: the server binds
//! over a socket file that refuses connections (nobody listens), but leaves alone a socket
//! file whose connect fails any other way, here a live datagram socket (`EPROTOTYPE`), which
//! stands in for errors as root cannot produce for real (`EACCES` on another user's socket).

use std::os::unix::net::{UnixDatagram, UnixListener};

use agent_protocol_driver::server::{bind_unix_socket, Listener};

use crate::support::timeout;
use crate::{on_both_runtimes, Harness};

const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A socket file nobody listens on (connect: ECONNREFUSED) is replaced and served.
pub async fn refused_socket_file_is_replaced<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    // Dropping a std listener closes it but leaves its file behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener: Listener<R> = bind_unix_socket::<R>(&path, 0o600)
        .expect("a refused socket file is stale")
        .into();
    let connecting = R::connect_unix(&path);
    let accepted = timeout::<R, _>(WAIT, "accept", listener.accept_stream());
    let (c, a) = futures_util::future::join(connecting, accepted).await;
    c.expect("connects to the new listener");
    a.expect("the new listener accepts");
}

/// A live socket whose connect fails other than by refusal keeps its file, and the error names
/// the path.
pub async fn live_socket_of_another_kind_is_left_alone<R: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datagram.sock");
    let live = UnixDatagram::bind(&path).unwrap();
    let err = bind_unix_socket::<R>(&path, 0o600).expect_err("the file belongs to a live socket");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name the path: {err}"
    );
    // Still the datagram socket's file: a datagram sent to the path reaches it.
    let sender = UnixDatagram::unbound().unwrap();
    sender
        .send_to(b"still mine", &path)
        .expect("the file is still the live socket");
    let mut buf = [0u8; 16];
    live.set_read_timeout(Some(WAIT)).unwrap();
    let n = live.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");
}

on_both_runtimes!(
    refused_socket_file_is_replaced,
    live_socket_of_another_kind_is_left_alone
);
