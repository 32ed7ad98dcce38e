//! Expensive input on one connection does not hold up the others.
//!
//! Two hostile proxies (raw Unix sockets driven from plain threads, as many as the runtimes have
//! worker threads) complete the handshake and then send worst-case 16 MiB RequestHeaders frames
//! back to back: as many distinct header names as fit. Decoding such a frame used to take
//! seconds of CPU (every name compared with every earlier one), which parked a worker thread per
//! hostile connection and left nobody to answer anyone else. Now the frame is refused without
//! being decoded, for going over the element budget (answered 413; within the budget, decoding
//! stops at the header limit, answered 431), and costs one pass over its bytes; meanwhile a
//! well-behaved client keeps getting answers and new clients keep completing their handshake.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::agent::{HEADER_LIMIT_REASON, MESSAGE_TOO_COMPLEX_REASON};
use agent_protocol_core::frame::MAX_FRAME_LEN;
use agent_protocol_core::Decision;
use agent_protocol_driver::client::{AgentClient, ClientConfig};

use crate::agents::{headers, TestAgent};
use crate::support::{serve_uds, timeout};
use crate::Harness;

/// Hang guard for one round trip of the well-behaved client.
/// (Generous: a debug build takes about 2 s of CPU to read one 16 MiB frame.)
const WAIT: Duration = Duration::from_secs(20);

/// How long the hostile connections keep sending.
const ATTACK: Duration = Duration::from_millis(1500);

fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(ty);
    out.extend_from_slice(payload);
    out
}

/// A JSON RequestHeaders payload of just under the frame limit, made of distinct header names.
fn worst_case_payload(cid: &str) -> Vec<u8> {
    let mut out = format!(
        r#"{{"correlation_id":"{cid}","metadata":{{"correlation_id":"{cid}","request_id":"r","client_ip":"10.0.0.1","client_port":1,"protocol":"HTTP/1.1","timestamp":"t"}},"method":"GET","uri":"/","headers":{{"#
    );
    let limit = MAX_FRAME_LEN as usize - 64;
    let mut i = 0u64;
    while out.len() < limit {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#""h{i}":["v"]"#));
        i += 1;
    }
    out.push_str("}}");
    out.into_bytes()
}

/// Handshakes over `stream` (JSON), returning once the answer is read.
fn handshake(stream: &mut UnixStream) {
    let request = br#"{"supported_versions":[2],"proxy_id":"hostile","proxy_version":"0","supported_encodings":["json"]}"#;
    stream.write_all(&frame(0x01, request)).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 0x02, "handshake answer");
}

/// One hostile proxy: writes the worst-case frame until `stop`, reading (and counting) the
/// refusals on a second thread so that its own unread answers never stop the server.
fn hostile(
    path: &str,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    let mut stream = UnixStream::connect(path).unwrap();
    handshake(&mut stream);
    let mut reader = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            let answers = text.matches(MESSAGE_TOO_COMPLEX_REASON).count()
                + text.matches(HEADER_LIMIT_REASON).count();
            refused.store(answers, Ordering::SeqCst);
        }
    });
    std::thread::spawn(move || {
        let frame = frame(0x10, &worst_case_payload("bomb"));
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            if stream.write_all(&frame).is_err() {
                break;
            }
            sent += 1;
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        sent
    })
}

pub async fn worst_case_frames_do_not_delay_other_connections<R: Harness>() {
    let agent = serve_uds::<_, R>(TestAgent::default());
    let path = agent.path.to_str().unwrap().to_owned();

    let good = AgentClient::<R>::connect(&path, ClientConfig::default())
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..2)
        .map(|_| hostile(&path, stop.clone(), refused.clone()))
        .collect();

    let started = Instant::now();
    let mut round_trips = 0;
    let mut handshakes = 0;
    let mut slowest = Duration::ZERO;
    while started.elapsed() < ATTACK {
        let sent = Instant::now();
        let answer = timeout::<R, _>(WAIT, "a round trip during the attack", async {
            good.send(headers(&format!("g{round_trips}"), "/shop"))
                .await
        })
        .await
        .expect("the well-behaved client is answered");
        assert_eq!(answer.decision, Decision::Allow);
        slowest = slowest.max(sent.elapsed());
        round_trips += 1;
        if round_trips % 10 == 0 {
            let answer = timeout::<R, _>(WAIT, "a new client during the attack", async {
                let fresh = AgentClient::<R>::connect(&path, ClientConfig::default())
                    .await
                    .expect("a new client completes its handshake");
                fresh.send(headers("fresh", "/admin")).await
            })
            .await
            .expect("the new client is answered");
            assert_eq!(answer.decision.kind(), "block");
            handshakes += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let frames: usize = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!(
        "{round_trips} round trips (slowest {slowest:?}) and {handshakes} handshakes while \
         {frames} worst-case frames were sent; {} refused so far",
        refused.load(Ordering::SeqCst)
    );
    assert!(frames >= 2, "the attack sent {frames} frames");
    assert!(
        round_trips >= 10,
        "only {round_trips} round trips during the attack"
    );
    assert!(handshakes >= 1);
    // The frames are refused as over a limit (answered 413 or 431), not left unanswered.
    crate::support::eventually::<R>("the worst-case frames are refused", WAIT, || {
        refused.load(Ordering::SeqCst) >= 1
    })
    .await;
}

crate::on_both_runtimes!(worst_case_frames_do_not_delay_other_connections);
