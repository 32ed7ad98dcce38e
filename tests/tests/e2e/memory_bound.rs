//! Events held by slow handlers cannot grow the agent without bound.
//!
//! A raw "proxy" (a blocking Unix socket on its own thread, writing valid frames built with the
//! core's codec) sends many 1 MiB request body chunks to a handler that holds each event until
//! the test releases it. The agent stops reading once the events its handlers hold weigh more
//! than [`MAX_IN_FLIGHT_BYTES`]: the proxy's writes block, the handler has seen only about that
//! many bytes of events, and the process grew by about that much rather than by everything
//! sent. Once the handler lets go, reading resumes and every event is answered: back-pressure,
//! not refusal.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_protocol_core::frame::{FrameType, MAX_FRAME_LEN};
use agent_protocol_core::{AgentResponse, BodyChunk, Event, RequestBodyChunkEvent};
use agent_protocol_driver::server::{AgentHandler, MAX_IN_FLIGHT_BYTES};
use tokio::sync::watch;

use crate::hostile_loops::{
    answer_cid, event_frame, handshake_request, read_frame, rss_bytes, SERIAL,
};
use crate::support::{eventually, serve_uds, sleep, timeout};
use crate::{on_both_runtimes, Harness};

/// Hang guard for steps that normally take well under a second.
const WAIT: Duration = Duration::from_secs(30);

/// Body bytes of each event the proxy sends.
const CHUNK: usize = 1024 * 1024;

/// Events the proxy sends: about three times what the bound lets the handlers hold.
const EVENTS: usize = 3 * MAX_IN_FLIGHT_BYTES / CHUNK + 8;

/// Holds every body chunk (the event itself, so its memory stays allocated) until `release`
/// turns true, then allows it.
struct HoldingAgent {
    held: Arc<AtomicUsize>,
    release: watch::Receiver<bool>,
}

impl AgentHandler for HoldingAgent {
    async fn on_request_body_chunk(&self, event: RequestBodyChunkEvent) -> AgentResponse {
        self.held.fetch_add(1, Ordering::SeqCst);
        let mut release = self.release.clone();
        let _ = release.wait_for(|go| *go).await;
        drop(event);
        AgentResponse::allow()
    }
}

/// Connects to an agent's socket and completes a JSON handshake.
fn raw_proxy(path: &Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&handshake_request()).unwrap();
    let (ty, _) = read_frame(&mut s).unwrap();
    assert_eq!(ty, FrameType::HandshakeResponse.as_byte());
    s
}

/// The correlation id of event `i`; all have the same length, so one frame serves as a
/// template for every other.
fn cid(i: usize) -> String {
    format!("held-{i:06}")
}

/// A RequestBodyChunk frame with `CHUNK` bytes of body for `cid(0)`, and where that id sits.
fn template() -> (Vec<u8>, usize) {
    let event = Event::RequestBodyChunk(RequestBodyChunkEvent(BodyChunk {
        correlation_id: cid(0).into(),
        data: vec![0x5a; CHUNK].into(),
        ..Default::default()
    }));
    let frame = event_frame(&event);
    let at = frame
        .windows(cid(0).len())
        .position(|w| w == cid(0).as_bytes())
        .unwrap();
    (frame, at)
}

pub async fn large_events_held_by_handlers_stop_the_agent_reading<R: Harness>() {
    let _serial = SERIAL.lock().await;
    let held = Arc::new(AtomicUsize::new(0));
    let (release, release_rx) = watch::channel(false);
    let agent = HoldingAgent {
        held: held.clone(),
        release: release_rx,
    };
    let agent = serve_uds::<_, R>(agent);
    let (path, handle) = (&agent.path, &agent.handle);

    let proxy = raw_proxy(path);
    let (mut frame, at) = template();
    let payload_len = frame.len() - 5;
    let rss_before = rss_bytes();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut writer = proxy.try_clone().unwrap();
    let counter = sent.clone();
    let writer_thread = std::thread::spawn(move || {
        for i in 0..EVENTS {
            frame[at..at + cid(i).len()].copy_from_slice(cid(i).as_bytes());
            writer.write_all(&frame).unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    // Wait until the handler has seen no new event for a second (or all of them arrived).
    let started = Instant::now();
    let mut last = (held.load(Ordering::SeqCst), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) && !writer_thread.is_finished() {
        assert!(started.elapsed() < WAIT * 2, "events kept arriving");
        sleep::<R>(Duration::from_millis(50)).await;
        let now = held.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    // Let the agent finish whatever it had read.
    sleep::<R>(Duration::from_millis(300)).await;
    let rss_held = rss_bytes();
    let growth = rss_held.saturating_sub(rss_before);
    let held_now = held.load(Ordering::SeqCst);
    // What the agent weighs each event at: its body and correlation id (the JSON payload
    // carries the body in base64, a third larger).
    let held_bytes = held_now * (CHUNK + cid(0).len());
    println!(
        "{EVENTS} events of {payload_len} payload bytes sent: the handler holds {held_now} \
         ({} MiB of payload); proxy wrote {} frames; RSS {} -> {} MiB (+{} MiB)",
        held_bytes >> 20,
        sent.load(Ordering::SeqCst),
        rss_before >> 20,
        rss_held >> 20,
        growth >> 20,
    );
    assert!(
        !writer_thread.is_finished() && held_now < EVENTS,
        "the agent kept reading: the handler holds all {held_now} events"
    );
    // One read past the bound completes at most one more frame besides the one in progress.
    assert!(
        held_bytes <= MAX_IN_FLIGHT_BYTES + 2 * (CHUNK + cid(0).len()),
        "the handler holds {held_bytes} bytes of events (bound {MAX_IN_FLIGHT_BYTES})"
    );
    assert!(held_now > 0);
    // The events themselves, the read buffer (up to a frame) and allocator slack.
    let rss_bound = MAX_IN_FLIGHT_BYTES + 2 * MAX_FRAME_LEN as usize;
    assert!(
        growth < rss_bound as u64,
        "RSS grew by {} MiB while handlers held events (bound {} MiB)",
        growth >> 20,
        rss_bound >> 20
    );

    // Released, the handler answers everything: the rest is read and every event answered.
    let mut reader = proxy.try_clone().unwrap();
    let reader_thread = std::thread::spawn(move || {
        let mut answered = Vec::new();
        while answered.len() < EVENTS {
            let (ty, payload) = read_frame(&mut reader).unwrap();
            if ty == FrameType::AgentResponse.as_byte() {
                answered.push(answer_cid(&payload));
            }
        }
        answered
    });
    release.send(true).unwrap();
    let answered = timeout::<R, _>(WAIT * 2, "every event is answered", async {
        loop {
            if reader_thread.is_finished() {
                break reader_thread.join().unwrap();
            }
            sleep::<R>(Duration::from_millis(20)).await;
        }
    })
    .await;
    writer_thread.join().unwrap();
    assert_eq!(held.load(Ordering::SeqCst), EVENTS);
    let unique: HashSet<&String> = answered.iter().collect();
    assert_eq!(unique.len(), EVENTS, "an event was answered twice");
    assert!((0..EVENTS).all(|i| unique.contains(&cid(i))));
    let _ = proxy.shutdown(std::net::Shutdown::Both);
    eventually::<R>("connection closed", WAIT, || handle.connections() == 0).await;
    eventually::<R>("no request in flight", WAIT, || handle.in_flight() == 0).await;
}

on_both_runtimes!(large_events_held_by_handlers_stop_the_agent_reading);
