//! api.md "v2: keeping bots out", over real HTTP: the client address behind trusted proxies,
//! the per-address rate limit, the human check (proof of work and captcha, against a fake
//! siteverify server started here) and eligibility by a claim, plus the promotion fields
//! that turn them on.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Form, Json, Router};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use common::{
    assert_error, jwt_with_claims, live_promotion, now_s, promotion_between, read, send, Mode,
    TestServer, GENEROUS_LIMITS,
};

// ---------------------------------------------------------------------------------------------
// Client addresses and the per-address limit
// ---------------------------------------------------------------------------------------------

/// Requests one client address may make at once (`[rate_limit.ip] burst`). The refill is one
/// a second, far slower than the few loopback requests each check sends in a row.
const IP_BURST: usize = 2;
const IP_TOKEN_PATH: &str = "/promotions/ip-1/items/ip-sku/token";
const IP_PURCHASE_PATH: &str = "/promotions/ip-buy/items/ip-buy-sku/purchase";

/// A header-mode server whose per-shopper limits are never met and whose per-address limit
/// is `IP_BURST` at once, with `flags`; it has a promotion with tokens (`ip-1`) and one
/// without (`ip-buy`).
async fn start_ip_limited(flags: &[&str]) -> TestServer {
    let toml = format!("{GENEROUS_LIMITS}[rate_limit.ip]\nper_s = 1\nburst = {IP_BURST}\n");
    let server = TestServer::start_with_args(Mode::Header, &toml, flags).await;
    server
        .create_promotion(live_promotion("ip-1", &[("ip-sku", 1000)], true))
        .await;
    server
        .create_promotion(live_promotion("ip-buy", &[("ip-buy-sku", 1000)], false))
        .await;
    server
}

fn xff(value: &str) -> (&'static str, String) {
    ("X-Forwarded-For", value.to_owned())
}

fn forwarded(value: &str) -> (&'static str, String) {
    ("Forwarded", value.to_owned())
}

/// A token request as `user` with `headers` added (what the proxies say about the caller).
async fn token_from(
    server: &TestServer,
    user: &str,
    headers: &[(&'static str, String)],
) -> (StatusCode, Value) {
    let mut request = server.shopper(user, Method::POST, IP_TOKEN_PATH);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    send(request).await
}

#[track_caller]
fn expect_ok(answer: &(StatusCode, Value), case: &str) {
    assert_eq!(answer.0, StatusCode::OK, "{case}: {}", answer.1);
}

#[track_caller]
fn expect_limited(answer: &(StatusCode, Value), case: &str) {
    assert_eq!(
        answer.0,
        StatusCode::TOO_MANY_REQUESTS,
        "{case}: {}",
        answer.1
    );
    assert_error(answer, 429, "rate_limited");
}

/// Spends one client address's budget: `IP_BURST` token requests from distinct shoppers
/// pass, the next is refused 429. `headers(i)` is what the i-th request carries, so a test
/// can vary what must not matter.
async fn spend_one_budget(
    server: &TestServer,
    case: &str,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) {
    for i in 0..=IP_BURST {
        let answer = token_from(server, &format!("{case}-{i}"), &headers(i)).await;
        let label = format!("{case}, request {i}");
        if i < IP_BURST {
            expect_ok(&answer, &label);
        } else {
            expect_limited(&answer, &label);
        }
    }
}

/// Asserts a 429 `rate_limited` answer with `Retry-After` in whole seconds, at least 1.
async fn expect_limited_with_retry_after(response: Response, case: &str) {
    let retry_after_s = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let answer = read(response).await;
    expect_limited(&answer, case);
    let retry_after_s = retry_after_s.unwrap_or_else(|| panic!("{case}: no Retry-After seconds"));
    assert!(retry_after_s >= 1, "{case}: Retry-After {retry_after_s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Proxies are trusted, but not the peer (127.0.0.1): whatever it claims, it is itself.
    let server = start_ip_limited(&["--trusted-proxies", "192.0.2.0/24"]).await;
    spend_one_budget(&server, "untrusted", |i| {
        vec![xff(&format!("198.51.100.{i}"))]
    })
    .await;
    let answer = token_from(&server, "untrusted-xff", &[xff("198.51.100.50")]).await;
    expect_limited(&answer, "yet another spoofed X-Forwarded-For");
    let answer = token_from(&server, "untrusted-fwd", &[forwarded("for=198.51.100.51")]).await;
    expect_limited(&answer, "a spoofed Forwarded");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_a_trusted_peer_gives_each_client_its_own_budget() {
    let server = start_ip_limited(&["--trusted-proxies", "127.0.0.1/32"]).await;
    // The second client still has its whole budget after the first spent all of its own.
    for client in ["10.0.0.1", "10.0.0.2"] {
        spend_one_budget(&server, &format!("trusted-{client}"), |_| vec![xff(client)]).await;
    }
    let answer = token_from(&server, "trusted-third", &[xff("10.0.0.3")]).await;
    expect_ok(&answer, "a third client");
    // The clients' requests did not count against the proxy itself.
    let answer = token_from(&server, "trusted-peer", &[]).await;
    expect_ok(&answer, "the proxy's own request, without X-Forwarded-For");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rightmost_untrusted_x_forwarded_for_address_is_the_client() {
    let server = start_ip_limited(&["--trusted-proxies", "127.0.0.1/32,10.100.0.0/16"]).await;
    // The client writes what it likes on the left; our proxy appends the address it saw.
    spend_one_budget(&server, "rightmost", |i| {
        vec![xff(&format!("203.0.113.{i}, 10.9.9.9"))]
    })
    .await;
    // A trusted hop (10.100.0.5) after the client is skipped: still 10.9.9.9.
    let through_hop = [xff("203.0.113.77, 10.9.9.9, 10.100.0.5")];
    let answer = token_from(&server, "rightmost-hop", &through_hop).await;
    expect_limited(&answer, "behind a second trusted proxy");
    // A client 10.8.8.8 claiming to be 10.9.9.9 is 10.8.8.8, with its own budget.
    let answer = token_from(&server, "rightmost-other", &[xff("10.9.9.9, 10.8.8.8")]).await;
    expect_ok(&answer, "another client that names 10.9.9.9 on the left");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_header_from_a_trusted_peer_is_honoured() {
    let server = start_ip_limited(&["--trusted-proxies", "127.0.0.1/32"]).await;
    // RFC 7239 elements: a `for=` parameter, alone or among others.
    let elements = ["for=10.6.6.6", "for=10.6.6.6;proto=https", "for=10.6.6.6"];
    spend_one_budget(&server, "forwarded", |i| {
        vec![forwarded(elements[i % elements.len()])]
    })
    .await;
    let answer = token_from(&server, "forwarded-other", &[forwarded("for=10.6.6.7")]).await;
    expect_ok(&answer, "another client behind the same proxy");
    // As with X-Forwarded-For, an element the client wrote itself before ours does not
    // give it a new budget.
    let spoofed = [forwarded("for=198.51.100.1, for=10.6.6.6")];
    let answer = token_from(&server, "forwarded-spoofed", &spoofed).await;
    expect_limited(&answer, "a spoofed element left of the proxy's");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_answers_429_with_retry_after_on_the_token_route() {
    let server = start_ip_limited(&[]).await;
    for i in 0..IP_BURST {
        let answer = token_from(&server, &format!("addr-{i}"), &[]).await;
        expect_ok(&answer, "within the address's burst");
    }
    let response = server
        .shopper("addr-last", Method::POST, IP_TOKEN_PATH)
        .send()
        .await
        .expect("send");
    expect_limited_with_retry_after(response, "a new shopper from the same address").await;
    // The credential is checked before the limit; the promotion is looked up after it.
    let answer = send(server.client.post(server.url(IP_TOKEN_PATH))).await;
    assert_error(&answer, 401, "unauthorized");
    let unknown = "/promotions/nope/items/ip-sku/token";
    let answer = send(server.shopper("addr-unknown", Method::POST, unknown)).await;
    expect_limited(&answer, "an unknown promotion from a limited address");
    // Only the token and purchase routes are limited per address.
    let (status, _) = send(server.client.get(server.url("/promotions/ip-1"))).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_answers_429_with_retry_after_on_the_purchase_route() {
    let server = start_ip_limited(&[]).await;
    let purchase = |user: &str| {
        server
            .shopper(user, Method::POST, IP_PURCHASE_PATH)
            .json(&json!({"request_id": "r1"}))
    };
    for i in 0..IP_BURST {
        let (status, order) = send(purchase(&format!("buyer-{i}"))).await;
        assert_eq!(status, StatusCode::CREATED, "within the burst: {order}");
    }
    let response = purchase("buyer-last").send().await.expect("send");
    expect_limited_with_retry_after(response, "a new buyer from the same address").await;
    let unknown = "/promotions/nope/items/ip-buy-sku/purchase";
    let answer = send(
        server
            .shopper("buyer-unknown", Method::POST, unknown)
            .json(&json!({"request_id": "r1"})),
    )
    .await;
    expect_limited(&answer, "an unknown promotion from a limited address");
    server.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// Proof of work
// ---------------------------------------------------------------------------------------------

/// Small, so that a test solves a challenge in about 256 hashes.
const POW_BITS: u32 = 8;
/// The solver gives up after this many nonces (2^24: far beyond 2^`POW_BITS`).
const NONCE_TRIES_MAX: u64 = 1 << 24;

fn token_path(promotion: &str, sku: &str) -> String {
    format!("/promotions/{promotion}/items/{sku}/token")
}

fn purchase_path(promotion: &str, sku: &str) -> String {
    format!("/promotions/{promotion}/items/{sku}/purchase")
}

fn challenge_path(promotion: &str, sku: &str) -> String {
    format!("/promotions/{promotion}/items/{sku}/challenge")
}

/// `spec` with `"human_check": check`.
fn checked(mut spec: Value, check: &str) -> Value {
    spec["human_check"] = json!(check);
    spec
}

/// A header-mode server at `POW_BITS`, with `pow-1` (items `pow-a`, `pow-b`) and `pow-2`
/// (item `pow-c`), both asking for proof of work.
async fn start_pow() -> TestServer {
    let bits = POW_BITS.to_string();
    let flags = ["--pow-difficulty-bits", bits.as_str()];
    let server = TestServer::start_with_args(Mode::Header, GENEROUS_LIMITS, &flags).await;
    let one = live_promotion("pow-1", &[("pow-a", 100), ("pow-b", 100)], true);
    server.create_promotion(checked(one, "pow")).await;
    let two = live_promotion("pow-2", &[("pow-c", 100)], true);
    server.create_promotion(checked(two, "pow")).await;
    server
}

/// A challenge as the server handed it out.
#[derive(Debug, Clone)]
struct Challenge {
    text: String,
    difficulty_bits: u32,
    expires_at: String,
}

/// Asks for a challenge as `user`; asserts 200 and the answer's fields.
async fn challenge(server: &TestServer, user: &str, promotion: &str, sku: &str) -> Challenge {
    let path = challenge_path(promotion, sku);
    let (status, body) = send(server.shopper(user, Method::POST, &path)).await;
    assert_eq!(status, StatusCode::OK, "challenge: {body}");
    let text = body["challenge"].as_str().expect("challenge").to_owned();
    assert!(!text.is_empty(), "{body}");
    let difficulty_bits = body["difficulty_bits"].as_u64().expect("difficulty_bits");
    let expires_at = body["expires_at"].as_str().expect("expires_at").to_owned();
    Challenge {
        text,
        difficulty_bits: u32::try_from(difficulty_bits).expect("bits fit u32"),
        expires_at,
    }
}

/// Leading zero bits of SHA-256 over the UTF-8 bytes of `challenge` followed by `nonce`.
fn zero_bits(challenge: &str, nonce: &str) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(challenge.as_bytes());
    hasher.update(nonce.as_bytes());
    let digest = hasher.finalize();
    let mut bits = 0;
    for byte in digest.iter() {
        bits += byte.leading_zeros();
        if *byte != 0 {
            break;
        }
    }
    bits
}

/// The first nonce (decimal) whose hash with `challenge` meets `difficulty_bits` or not,
/// as `solves` asks.
fn nonce_for(challenge: &str, difficulty_bits: u32, solves: bool) -> String {
    (0..NONCE_TRIES_MAX)
        .map(|n| n.to_string())
        .find(|nonce| (zero_bits(challenge, nonce) >= difficulty_bits) == solves)
        .expect("a nonce within the tries")
}

/// The token request body answering `text` (solved at `difficulty_bits`).
fn pow_answer(text: &str, difficulty_bits: u32) -> Value {
    let nonce = nonce_for(text, difficulty_bits, true);
    json!({"pow": {"challenge": text, "nonce": nonce}})
}

fn solved(challenge: &Challenge) -> Value {
    pow_answer(&challenge.text, challenge.difficulty_bits)
}

/// A token request as `user` with `body` (None: no body at all).
async fn token_with(
    server: &TestServer,
    user: &str,
    promotion: &str,
    sku: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let request = server.shopper(user, Method::POST, &token_path(promotion, sku));
    match body {
        Some(body) => send(request.json(body)).await,
        None => send(request).await,
    }
}

#[track_caller]
fn expect_human_check_failed(answer: &(StatusCode, Value), case: &str) {
    assert_eq!(answer.0, StatusCode::FORBIDDEN, "{case}: {}", answer.1);
    assert_error(answer, 403, "human_check_failed");
}

/// `challenge` with its expiry moved an hour later, as the holder of an expired challenge
/// would try. There is no flag for a challenge's lifetime, so a really expired one cannot be
/// waited for here; what keeps an expired challenge expired is the server's MAC over the
/// challenge, and that is what this checks. When the expiry is not in the clear (unix
/// milliseconds or seconds), one character in the middle is changed instead: the MAC must
/// catch that as well.
fn tampered(challenge: &Challenge) -> String {
    if let Ok(expires) = OffsetDateTime::parse(&challenge.expires_at, &Rfc3339) {
        let seconds = i128::from(expires.unix_timestamp());
        let millis = expires.unix_timestamp_nanos() / 1_000_000;
        let later = [(millis, millis + 3_600_000), (seconds, seconds + 3600)];
        for (old, new) in later {
            let old = old.to_string();
            if challenge.text.contains(&old) {
                return challenge.text.replacen(&old, &new.to_string(), 1);
            }
        }
    }
    one_character_changed(&challenge.text)
}

/// `text` with the alphanumeric character nearest its middle replaced by another one of the
/// same kind (so that the string still decodes, and only its integrity is wrong).
fn one_character_changed(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let middle = chars.len() / 2;
    let position = (middle..chars.len())
        .chain(0..middle)
        .find(|&i| chars[i].is_ascii_alphanumeric());
    match position {
        Some(i) => {
            chars[i] = match chars[i] {
                '9' => '0',
                'z' => 'a',
                'Z' => 'A',
                c => char::from(u8::try_from(c).expect("ascii") + 1),
            }
        }
        None => chars.push('0'),
    }
    chars.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solved_challenge_gets_a_token_and_the_token_buys_without_more_work() {
    let server = start_pow().await;
    let issued = challenge(&server, "pow-alice", "pow-1", "pow-a").await;
    assert_eq!(issued.difficulty_bits, POW_BITS);
    let expires = OffsetDateTime::parse(&issued.expires_at, &Rfc3339).expect("RFC 3339");
    assert!(expires > OffsetDateTime::now_utc(), "{issued:?}");
    assert!(issued.expires_at.ends_with('Z'), "{issued:?}");

    let answer = token_with(
        &server,
        "pow-alice",
        "pow-1",
        "pow-a",
        Some(&solved(&issued)),
    )
    .await;
    expect_ok(&answer, "a solved challenge");
    let token = answer.1["token"].as_str().expect("token");
    // The human check gates the token; the token alone gates the purchase.
    let (status, order) = send(
        server
            .shopper("pow-alice", Method::POST, &purchase_path("pow-1", "pow-a"))
            .json(&json!({"request_id": "r1", "token": token})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_proof_of_work_is_refused() {
    let server = start_pow().await;
    let user = "pow-bob";
    let answer = token_with(&server, user, "pow-1", "pow-a", None).await;
    expect_human_check_failed(&answer, "no body");
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&json!({}))).await;
    expect_human_check_failed(&answer, "an empty object");
    let captcha = json!({"captcha": "good"});
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&captcha)).await;
    expect_human_check_failed(&answer, "a captcha answer where proof of work is asked");

    let issued = challenge(&server, user, "pow-1", "pow-a").await;
    let nonce = nonce_for(&issued.text, issued.difficulty_bits, false);
    let wrong = json!({"pow": {"challenge": issued.text, "nonce": nonce}});
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&wrong)).await;
    expect_human_check_failed(&answer, "a nonce that does not solve the challenge");
    // Solved, but not a challenge the server made.
    let made_up = pow_answer("made-up-challenge", POW_BITS);
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&made_up)).await;
    expect_human_check_failed(&answer, "a made-up challenge");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_good_once() {
    let server = start_pow().await;
    let user = "pow-carol";
    let answer = solved(&challenge(&server, user, "pow-1", "pow-a").await);
    let first = token_with(&server, user, "pow-1", "pow-a", Some(&answer)).await;
    expect_ok(&first, "the first use");
    // Replayed while its token is still unused: a fresh answer would get that same token,
    // but a used answer gets nothing.
    let replay = token_with(&server, user, "pow-1", "pow-a", Some(&answer)).await;
    expect_human_check_failed(&replay, "the same challenge and nonce again");
    let fresh = solved(&challenge(&server, user, "pow-1", "pow-a").await);
    let again = token_with(&server, user, "pow-1", "pow-a", Some(&fresh)).await;
    expect_ok(&again, "a fresh challenge");
    assert_eq!(again.1["token"], first.1["token"], "the unused token again");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_bound_to_its_shopper_promotion_and_item() {
    let server = start_pow().await;
    let user = "pow-dave";
    let daves = solved(&challenge(&server, user, "pow-1", "pow-a").await);
    let answer = token_with(&server, "pow-mallory", "pow-1", "pow-a", Some(&daves)).await;
    expect_human_check_failed(&answer, "another shopper's challenge");
    let other_item = solved(&challenge(&server, user, "pow-1", "pow-b").await);
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&other_item)).await;
    expect_human_check_failed(&answer, "another item's challenge");
    let other_promotion = solved(&challenge(&server, user, "pow-2", "pow-c").await);
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&other_promotion)).await;
    expect_human_check_failed(&answer, "another promotion's challenge");
    // Dave's own challenge for this item works, so the refusals were about the binding.
    let own = solved(&challenge(&server, user, "pow-1", "pow-a").await);
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&own)).await;
    expect_ok(&answer, "dave's own challenge");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_with_a_tampered_expiry_is_refused() {
    let server = start_pow().await;
    let user = "pow-erin";
    let issued = challenge(&server, user, "pow-1", "pow-a").await;
    let forged = tampered(&issued);
    assert_ne!(forged, issued.text);
    // Solved over the forged text, so that only the server's MAC can tell.
    let answer = pow_answer(&forged, issued.difficulty_bits);
    let refused = token_with(&server, user, "pow-1", "pow-a", Some(&answer)).await;
    expect_human_check_failed(&refused, "a challenge whose expiry was moved");
    let own = solved(&challenge(&server, user, "pow-1", "pow-a").await);
    let answer = token_with(&server, user, "pow-1", "pow-a", Some(&own)).await;
    expect_ok(&answer, "an untouched challenge");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_for_an_unknown_item_is_404_and_needs_a_shopper() {
    let server = start_pow().await;
    for (promotion, sku) in [("pow-1", "nope"), ("nope", "pow-a")] {
        let path = challenge_path(promotion, sku);
        let answer = send(server.shopper("pow-frank", Method::POST, &path)).await;
        assert_error(&answer, 404, "not_found");
    }
    let path = challenge_path("pow-1", "pow-a");
    let answer = send(server.client.post(server.url(&path))).await;
    assert_error(&answer, 401, "unauthorized");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_and_eligibility_refusals_come_before_the_human_check() {
    let server = start_pow().await;
    let level = |n: i64| vec![("level", json!(n))];
    let mut gated = live_promotion("pow-el", &[("pow-el-a", 10), ("pow-el-zero", 0)], true);
    gated["eligibility"] = json!({"claim": "level", "min": 3});
    server.create_promotion(checked(gated, "pow")).await;
    let later = promotion_between("pow-later", &[("pow-later-a", 10)], true, 3600, 7200);
    server.create_promotion(checked(later, "pow")).await;
    // None of these requests carries a proof of work.
    let ask = |user: &'static str, claims: Vec<(&'static str, Value)>, path: String| {
        let request = with_claims(&server, user, &claims, &path);
        send(request)
    };
    let answer = ask("ord-1", level(5), token_path("pow-el", "nope")).await;
    assert_error(&answer, 404, "not_found");
    let answer = ask("ord-2", level(5), token_path("pow-el", "pow-el-zero")).await;
    assert_error(&answer, 409, "sold_out");
    let answer = ask("ord-3", level(5), token_path("pow-later", "pow-later-a")).await;
    assert_error(&answer, 409, "not_started");
    let answer = ask("ord-4", level(1), token_path("pow-el", "pow-el-a")).await;
    assert_error(&answer, 403, "not_eligible");
    let answer = ask("ord-5", level(5), token_path("pow-el", "pow-el-a")).await;
    expect_human_check_failed(&answer, "eligible, without proof of work");
    let (status, _) = send(server.admin(Method::POST, "/admin/promotions/pow-el/stop")).await;
    assert_eq!(status, StatusCode::OK);
    let answer = ask("ord-6", level(5), token_path("pow-el", "pow-el-a")).await;
    assert_error(&answer, 409, "ended");
    server.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// Captcha, against a fake siteverify server
// ---------------------------------------------------------------------------------------------

const CAPTCHA_SECRET: &str = "test-captcha-secret";
/// The server's wait for the verifier (`captcha_timeout_ms`).
const CAPTCHA_TIMEOUT_MS: u64 = 300;
/// The widget response the fake verifier accepts.
const CAPTCHA_GOOD: &str = "good";
/// The widget response the fake verifier answers only after `VERIFIER_SLOW_MS`.
const CAPTCHA_SLOW: &str = "slow";
/// Far longer than `CAPTCHA_TIMEOUT_MS`, and shorter than the server's request timeout.
const VERIFIER_SLOW_MS: u64 = 5_000;
const CAPTCHA_TOKEN_PATH: &str = "/promotions/cap-1/items/cap-sku/token";

/// A siteverify endpoint (the protocol hCaptcha, Turnstile and reCAPTCHA share) that keeps
/// every form it was sent.
#[derive(Debug, Default)]
struct FakeVerifier {
    forms: Mutex<Vec<HashMap<String, String>>>,
}

impl FakeVerifier {
    fn last_form(&self) -> HashMap<String, String> {
        let forms = self.forms.lock().expect("forms");
        forms.last().cloned().expect("the verifier was called")
    }
}

async fn siteverify(
    State(verifier): State<Arc<FakeVerifier>>,
    Form(form): Form<HashMap<String, String>>,
) -> Json<Value> {
    let response = form.get("response").cloned().unwrap_or_default();
    verifier.forms.lock().expect("forms").push(form);
    match response.as_str() {
        CAPTCHA_GOOD => Json(json!({"success": true})),
        CAPTCHA_SLOW => {
            tokio::time::sleep(Duration::from_millis(VERIFIER_SLOW_MS)).await;
            Json(json!({"success": true}))
        }
        _ => Json(json!({"success": false, "error-codes": ["invalid-input-response"]})),
    }
}

/// Starts the fake verifier on a free loopback port: its URL, and what it was sent.
async fn start_verifier() -> (String, Arc<FakeVerifier>) {
    let verifier = Arc::new(FakeVerifier::default());
    let app = Router::new()
        .route("/siteverify", post(siteverify))
        .with_state(Arc::clone(&verifier));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/siteverify"), verifier)
}

/// A header-mode server behind a trusted proxy (127.0.0.1) that checks captchas with
/// `verify_url`, with the captcha promotion `cap-1`.
async fn start_captcha(verify_url: &str) -> TestServer {
    let toml = format!("captcha_timeout_ms = {CAPTCHA_TIMEOUT_MS}\n{GENEROUS_LIMITS}");
    let flags = [
        "--trusted-proxies",
        "127.0.0.1/32",
        "--captcha-verify-url",
        verify_url,
        "--captcha-secret",
        CAPTCHA_SECRET,
    ];
    let server = TestServer::start_with_args(Mode::Header, &toml, &flags).await;
    let promotion = live_promotion("cap-1", &[("cap-sku", 100)], true);
    server.create_promotion(checked(promotion, "captcha")).await;
    server
}

fn captcha_request(server: &TestServer, user: &str, body: Option<Value>) -> RequestBuilder {
    let request = server.shopper(user, Method::POST, CAPTCHA_TOKEN_PATH);
    match body {
        Some(body) => request.json(&body),
        None => request,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_captcha_gets_a_token_and_the_verifier_sees_secret_response_and_client() {
    let (verify_url, verifier) = start_verifier().await;
    let server = start_captcha(&verify_url).await;
    let good = json!({"captcha": CAPTCHA_GOOD});

    let request = captcha_request(&server, "cap-alice", Some(good.clone()));
    let answer = send(request.header("X-Forwarded-For", "203.0.113.7")).await;
    expect_ok(&answer, "a good captcha through the proxy");
    let form = verifier.last_form();
    assert_eq!(form.get("secret").map(String::as_str), Some(CAPTCHA_SECRET));
    assert_eq!(form.get("response").map(String::as_str), Some(CAPTCHA_GOOD));
    // The client behind the proxy, not the proxy.
    assert_eq!(
        form.get("remoteip").map(String::as_str),
        Some("203.0.113.7")
    );

    let answer = send(captcha_request(&server, "cap-bob", Some(good))).await;
    expect_ok(&answer, "a good captcha from the proxy itself");
    let remote = verifier.last_form().get("remoteip").cloned();
    assert_eq!(remote.as_deref(), Some("127.0.0.1"));

    // The token buys without another captcha.
    let token = answer.1["token"].as_str().expect("token");
    let (status, order) = send(
        server
            .shopper("cap-bob", Method::POST, &purchase_path("cap-1", "cap-sku"))
            .json(&json!({"request_id": "r1", "token": token})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_rejected_captcha_is_refused() {
    let (verify_url, _verifier) = start_verifier().await;
    let server = start_captcha(&verify_url).await;
    let cases = [
        ("no body", None),
        ("no captcha field", Some(json!({}))),
        ("an empty captcha", Some(json!({"captcha": ""}))),
        (
            "a captcha the verifier rejects",
            Some(json!({"captcha": "bad"})),
        ),
    ];
    for (case, body) in cases {
        let answer = send(captcha_request(&server, "cap-carol", body)).await;
        expect_human_check_failed(&answer, case);
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_slower_than_the_timeout_fails_closed_with_503() {
    let (verify_url, _verifier) = start_verifier().await;
    let server = start_captcha(&verify_url).await;
    let started = Instant::now();
    let slow = json!({"captcha": CAPTCHA_SLOW});
    let answer = send(captcha_request(&server, "cap-dave", Some(slow))).await;
    let waited = started.elapsed();
    assert_error(&answer, 503, "unavailable");
    // Given up at captcha_timeout_ms, not after the verifier (5 s) or the request timeout.
    assert!(waited < Duration::from_millis(2_500), "waited {waited:?}");
    // The server goes on checking captchas.
    let good = json!({"captcha": CAPTCHA_GOOD});
    let answer = send(captcha_request(&server, "cap-dave", Some(good))).await;
    expect_ok(&answer, "a good captcha after a slow one");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_verifier_fails_closed_with_503() {
    let closed_port = common::process::free_port();
    let verify_url = format!("http://127.0.0.1:{closed_port}/siteverify");
    let server = start_captcha(&verify_url).await;
    let good = json!({"captcha": CAPTCHA_GOOD});
    let answer = send(captcha_request(&server, "cap-erin", Some(good))).await;
    assert_error(&answer, 503, "unavailable");
    server.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// Eligibility by a claim
// ---------------------------------------------------------------------------------------------

const EL_TOKEN_PATH: &str = "/promotions/el-tok/items/el-tok-sku/token";
const EL_TOKEN_PURCHASE_PATH: &str = "/promotions/el-tok/items/el-tok-sku/purchase";
const EL_BUY_PATH: &str = "/promotions/el-buy/items/el-buy-sku/purchase";

/// A POST to `path` as `user` carrying `claims`: in the JWT's payload (jwt mode), or as
/// `X-User-Claim-<name>` headers (header mode, a value sent as its text).
fn with_claims(
    server: &TestServer,
    user: &str,
    claims: &[(&'static str, Value)],
    path: &str,
) -> RequestBuilder {
    let request = server.client.post(server.url(path));
    match server.mode {
        Mode::Jwt => {
            let mut payload = json!({"sub": user, "exp": now_s() + 3600});
            for (name, value) in claims {
                payload[*name] = value.clone();
            }
            request.bearer_auth(jwt_with_claims(&payload))
        }
        Mode::Header => {
            let mut request = request.header("X-User-Id", user);
            for (name, value) in claims {
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                request = request.header(format!("X-User-Claim-{name}"), text);
            }
            request
        }
    }
}

/// One shopper's claims and whether the promotion admits them.
#[derive(Debug)]
struct ClaimCase {
    name: &'static str,
    claims: Vec<(&'static str, Value)>,
    eligible: bool,
}

fn claim_case(name: &'static str, claims: Vec<(&'static str, Value)>, eligible: bool) -> ClaimCase {
    ClaimCase {
        name,
        claims,
        eligible,
    }
}

#[track_caller]
fn expect_not_eligible(answer: &(StatusCode, Value), case: &str) {
    assert_eq!(answer.0, StatusCode::FORBIDDEN, "{case}: {}", answer.1);
    assert_error(answer, 403, "not_eligible");
}

/// A server in `mode` with two promotions admitting shoppers by `eligibility`: `el-tok`
/// (tokens required) and `el-buy` (no tokens, so the purchase route decides alone).
async fn start_eligibility(mode: Mode, eligibility: &Value) -> TestServer {
    let server = TestServer::start(mode).await;
    for (id, sku, require_token) in [
        ("el-tok", "el-tok-sku", true),
        ("el-buy", "el-buy-sku", false),
    ] {
        let mut spec = live_promotion(id, &[(sku, 100)], require_token);
        spec["eligibility"] = eligibility.clone();
        server.create_promotion(spec).await;
    }
    server
}

/// Each case's shopper on both routes: the token route (then, when admitted, a purchase
/// with that token) and the purchase route of the promotion without tokens.
async fn check_claims(server: &TestServer, cases: &[ClaimCase]) {
    for (i, case) in cases.iter().enumerate() {
        let user = format!("el-{i}");
        let answer = send(with_claims(server, &user, &case.claims, EL_TOKEN_PATH)).await;
        if case.eligible {
            expect_ok(&answer, &format!("{}: token", case.name));
            let token = answer.1["token"].as_str().expect("token");
            let with_token = json!({"request_id": "r1", "token": token});
            let request = with_claims(server, &user, &case.claims, EL_TOKEN_PURCHASE_PATH);
            let (status, order) = send(request.json(&with_token)).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "{}: purchase with token: {order}",
                case.name
            );
        } else {
            expect_not_eligible(&answer, &format!("{}: token", case.name));
        }
        let request = with_claims(server, &user, &case.claims, EL_BUY_PATH);
        let answer = send(request.json(&json!({"request_id": "r1"}))).await;
        if case.eligible {
            let (status, order) = &answer;
            assert_eq!(
                *status,
                StatusCode::CREATED,
                "{}: purchase: {order}",
                case.name
            );
        } else {
            expect_not_eligible(&answer, &format!("{}: purchase", case.name));
        }
    }
}

fn level_min_3() -> Value {
    json!({"claim": "level", "min": 3})
}

fn tier_gold_or_vip() -> Value {
    json!({"claim": "tier", "any_of": ["gold", "vip"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_by_min_reads_the_jwt() {
    let server = start_eligibility(Mode::Jwt, &level_min_3()).await;
    let cases = [
        claim_case("above the minimum", vec![("level", json!(5))], true),
        claim_case("at the minimum", vec![("level", json!(3))], true),
        claim_case("below the minimum", vec![("level", json!(2))], false),
        claim_case("a numeric string", vec![("level", json!("7"))], true),
        claim_case("a numeric string below", vec![("level", json!("1"))], false),
        claim_case("not a number", vec![("level", json!("high"))], false),
        claim_case("another claim only", vec![("xp", json!(10))], false),
        claim_case("no claim", vec![], false),
    ];
    check_claims(&server, &cases).await;
    // In jwt mode the claim headers are the caller's own words, not the shop's.
    let request = with_claims(&server, "el-header", &[], EL_TOKEN_PATH);
    let answer = send(request.header("X-User-Claim-level", "5")).await;
    expect_not_eligible(&answer, "a claim header in jwt mode");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_by_min_reads_the_claim_header_in_header_mode() {
    let server = start_eligibility(Mode::Header, &level_min_3()).await;
    let cases = [
        claim_case("above the minimum", vec![("level", json!("5"))], true),
        claim_case("at the minimum", vec![("level", json!("3"))], true),
        claim_case("below the minimum", vec![("level", json!("2"))], false),
        claim_case("not a number", vec![("level", json!("high"))], false),
        claim_case("another claim only", vec![("xp", json!("10"))], false),
        claim_case("no claim", vec![], false),
    ];
    check_claims(&server, &cases).await;
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_by_any_of_reads_the_jwt() {
    let server = start_eligibility(Mode::Jwt, &tier_gold_or_vip()).await;
    let cases = [
        claim_case("the first value", vec![("tier", json!("gold"))], true),
        claim_case("the second value", vec![("tier", json!("vip"))], true),
        claim_case("another value", vec![("tier", json!("silver"))], false),
        claim_case(
            "a list with one",
            vec![("tier", json!(["silver", "vip"]))],
            true,
        ),
        claim_case("a list without", vec![("tier", json!(["silver"]))], false),
        claim_case("an empty list", vec![("tier", json!([]))], false),
        claim_case("another claim only", vec![("rank", json!("gold"))], false),
        claim_case("no claim", vec![], false),
    ];
    check_claims(&server, &cases).await;
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_by_any_of_reads_the_claim_header_in_header_mode() {
    let server = start_eligibility(Mode::Header, &tier_gold_or_vip()).await;
    let cases = [
        claim_case("the first value", vec![("tier", json!("gold"))], true),
        claim_case("the second value", vec![("tier", json!("vip"))], true),
        claim_case("another value", vec![("tier", json!("silver"))], false),
        claim_case("another claim only", vec![("rank", json!("gold"))], false),
        claim_case("no claim", vec![], false),
    ];
    check_claims(&server, &cases).await;
    server.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------------------------------------
// The promotion fields
// ---------------------------------------------------------------------------------------------

/// A header-mode server that could check captchas (the verifier is never called here).
async fn start_for_promotions() -> TestServer {
    let flags = [
        "--captcha-verify-url",
        "http://127.0.0.1:9/siteverify",
        "--captcha-secret",
        CAPTCHA_SECRET,
    ];
    TestServer::start_with_args(Mode::Header, GENEROUS_LIMITS, &flags).await
}

/// One refused promotion: `field` set to `value`; the message must name one of `words`.
#[derive(Debug)]
struct BadField {
    case: &'static str,
    field: &'static str,
    value: Value,
    require_token: bool,
    words: &'static [&'static str],
}

fn bad(
    case: &'static str,
    field: &'static str,
    value: Value,
    require_token: bool,
    words: &'static [&'static str],
) -> BadField {
    BadField {
        case,
        field,
        value,
        require_token,
        words,
    }
}

fn bad_fields() -> Vec<BadField> {
    const CHECK: &[&str] = &["human_check"];
    const CHECK_OR_TOKEN: &[&str] = &["human_check", "require_token"];
    const BOUND: &[&str] = &["eligibility", "min", "any_of"];
    const ANY_OF: &[&str] = &["eligibility", "any_of"];
    const MIN: &[&str] = &["eligibility", "min"];
    const CLAIM: &[&str] = &["eligibility", "claim"];
    vec![
        bad(
            "unknown check",
            "human_check",
            json!("sometimes"),
            true,
            CHECK,
        ),
        bad("check not a string", "human_check", json!(1), true, CHECK),
        bad(
            "pow without tokens",
            "human_check",
            json!("pow"),
            false,
            CHECK_OR_TOKEN,
        ),
        bad(
            "captcha without tokens",
            "human_check",
            json!("captcha"),
            false,
            CHECK_OR_TOKEN,
        ),
        bad(
            "both min and any_of",
            "eligibility",
            json!({"claim": "level", "min": 3, "any_of": ["a"]}),
            true,
            BOUND,
        ),
        bad(
            "neither min nor any_of",
            "eligibility",
            json!({"claim": "level"}),
            true,
            BOUND,
        ),
        bad(
            "empty any_of",
            "eligibility",
            json!({"claim": "tier", "any_of": []}),
            true,
            ANY_OF,
        ),
        bad(
            "any_of not strings",
            "eligibility",
            json!({"claim": "tier", "any_of": [1, 2]}),
            true,
            ANY_OF,
        ),
        bad(
            "min not a number",
            "eligibility",
            json!({"claim": "level", "min": "three"}),
            true,
            MIN,
        ),
        bad("no claim", "eligibility", json!({"min": 3}), true, CLAIM),
        bad(
            "empty claim",
            "eligibility",
            json!({"claim": "", "min": 3}),
            true,
            CLAIM,
        ),
        bad(
            "claim with a space",
            "eligibility",
            json!({"claim": "has space", "min": 3}),
            true,
            CLAIM,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_human_check_or_eligibility_is_refused_naming_the_field() {
    let server = start_for_promotions().await;
    for (i, bad) in bad_fields().into_iter().enumerate() {
        let id = format!("val-{i}");
        let sku = format!("val-sku-{i}");
        let mut spec = live_promotion(&id, &[(sku.as_str(), 5)], bad.require_token);
        spec[bad.field] = bad.value;
        let answer = send(server.admin(Method::POST, "/admin/promotions").json(&spec)).await;
        let case = bad.case;
        assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{case}: {}", answer.1);
        assert_error(&answer, 400, "invalid_request");
        let message = answer.1["error"]["message"].as_str().unwrap_or("");
        assert!(
            bad.words.iter().any(|w| message.contains(w)),
            "{case}: {message}"
        );
        // Nothing was created.
        let path = format!("/admin/promotions/{id}");
        let answer = send(server.admin(Method::GET, &path)).await;
        assert_error(&answer, 404, "not_found");
    }
    server.stop().await.expect("clean stop");
}

/// Asserts that `view` shows `human_check` and `eligibility` as they were created.
#[track_caller]
fn assert_echoes(view: &Value, human_check: &str, eligibility: &Value, case: &str) {
    assert_eq!(view["human_check"], human_check, "{case}: {view}");
    let shown = &view["eligibility"];
    if eligibility.is_null() {
        assert!(shown.is_null(), "{case}: {view}");
        return;
    }
    assert_eq!(shown["claim"], eligibility["claim"], "{case}: {view}");
    for bound in ["min", "any_of"] {
        if !eligibility[bound].is_null() {
            assert_eq!(shown[bound], eligibility[bound], "{case}: {bound}: {view}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_views_echo_human_check_and_eligibility() {
    let server = start_for_promotions().await;
    let cases = [
        ("echo-plain", "none", Value::Null),
        ("echo-pow", "pow", level_min_3()),
        ("echo-captcha", "captcha", tier_gold_or_vip()),
    ];
    for (id, human_check, eligibility) in cases {
        let sku = format!("{id}-sku");
        let mut spec = live_promotion(id, &[(sku.as_str(), 5)], true);
        // The plain one leaves both out: the defaults are shown.
        if human_check != "none" {
            spec["human_check"] = json!(human_check);
            spec["eligibility"] = eligibility.clone();
        }
        let created = server.create_promotion(spec).await;
        assert_echoes(&created, human_check, &eligibility, "created");
        let admin_path = format!("/admin/promotions/{id}");
        let (status, admin) = send(server.admin(Method::GET, &admin_path)).await;
        assert_eq!(status, StatusCode::OK, "{admin}");
        assert_echoes(&admin, human_check, &eligibility, "admin view");
        let public_path = format!("/promotions/{id}");
        let (status, public) = send(server.client.get(server.url(&public_path))).await;
        assert_eq!(status, StatusCode::OK, "{public}");
        assert_echoes(&public, human_check, &eligibility, "public view");
    }
    server.stop().await.expect("clean stop");
}
