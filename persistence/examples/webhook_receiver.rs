//! A shop's webhook endpoint for seckill's order events, as small as HTTP allows. Run:
//! `cargo run -p seckill-persistence --example webhook_receiver -- [127.0.0.1:8090] [SECRET]`
//! and start seckill with `--events http://127.0.0.1:8090/hooks --events-secret SECRET`.
//!
//! Each event is one POST whose body is the CloudEvent. The receiver checks
//! `Seckill-Signature` over the raw body before anything else (401 if it fails: seckill
//! retries, so a mistake in the secret loses nothing) and answers 2xx once the event is
//! handled: any other answer makes seckill send it again. Delivery is at least once, so the
//! same event can come twice. The dedupe rule: keep the ids seen, drop a repeat (still
//! answering 200). Here the ids are kept in memory; a real receiver stores them with what
//! it does (one transaction, a unique key on the id). A real one also uses its web
//! framework instead of this hand-rolled HTTP (one request per connection, no chunked
//! bodies).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use seckill_persistence::events::webhook::verify_signature;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How far a signature's time may be from this clock (a replayed request is older).
const TOLERANCE_S: i64 = 300;
/// A bound on one request, against a client that sends forever.
const REQUEST_BYTES_MAX: usize = 1 << 20;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let secret: Arc<str> = args.next().unwrap_or_else(|| "SECRET".into()).into();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let listener = TcpListener::bind(&address).await?;
    println!("listening on http://{address}/");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(answer(stream, Arc::clone(&secret), Arc::clone(&seen)));
    }
}

async fn answer(mut stream: TcpStream, secret: Arc<str>, seen: Arc<Mutex<HashSet<String>>>) {
    let status = match read_request(&mut stream).await {
        Some((signature, body)) => handle(&secret, &seen, &signature, &body),
        None => "400 Bad Request",
    };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
}

fn handle(
    secret: &str,
    seen: &Mutex<HashSet<String>>,
    signature: &str,
    body: &[u8],
) -> &'static str {
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if !verify_signature(secret.as_bytes(), signature, body, now_s, TOLERANCE_S) {
        return "401 Unauthorized";
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(body) else {
        return "400 Bad Request";
    };
    let id = event["id"].as_str().unwrap_or_default().to_owned();
    let first_time = seen
        .lock()
        .map(|mut ids| ids.insert(id.clone()))
        .unwrap_or(false);
    if first_time {
        println!("{} {} {id}", event["type"], event["subject"]);
    } else {
        println!("dropped a repeat of {id}");
    }
    "200 OK"
}

/// The `Seckill-Signature` header and the body of one request.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        read_more(stream, &mut buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let length: usize = header("content-length")?.parse().ok()?;
    // Missing, it fails the check like a wrong one (401).
    let signature = header("seckill-signature").unwrap_or_default();
    let body_end = head_end + 4 + length;
    while buffer.len() < body_end {
        read_more(stream, &mut buffer).await?;
    }
    Some((signature, buffer[head_end + 4..body_end].to_vec()))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await.ok()?;
    if read == 0 || buffer.len() + read > REQUEST_BYTES_MAX {
        return None;
    }
    buffer.extend_from_slice(&chunk[..read]);
    Some(())
}
