//! Shopper JWTs over real HTTP (api.md "Shopper JWTs"): `nbf` honoured, `iat` allowed, `aud`
//! refused unless `--jwt-audience` names it (then required), `iss` required and matched with
//! `--jwt-issuer`.

mod common;

use reqwest::StatusCode;
use serde_json::{json, Value};

use common::{jwt_with_claims, live_promotion, now_s, send, Mode, TestServer, GENEROUS_LIMITS};

const AUDIENCE: &str = "seckill-shop";
const ISSUER: &str = "https://id.shop.example";
const TOKEN_PATH: &str = "/promotions/jwt-1/items/jwt-sku/token";

/// JWT claims for `sub`, valid for an hour, with the `extra` claims added.
fn claims(sub: &str, extra: &[(&str, Value)]) -> Value {
    let mut body = json!({"sub": sub, "exp": now_s() + 3600});
    for (name, value) in extra {
        body[*name] = value.clone();
    }
    body
}

/// Asks for a purchase token with a JWT carrying `claims`: 200 when `accepted`, else 401
/// `unauthorized`.
async fn expect(server: &TestServer, case: &str, claims: Value, accepted: bool) {
    let token = jwt_with_claims(&claims);
    let url = server.url(TOKEN_PATH);
    let answer = send(server.client.post(url).bearer_auth(token)).await;
    if accepted {
        assert_eq!(answer.0, StatusCode::OK, "{case}: {}", answer.1);
    } else {
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{case}: {}", answer.1);
        assert_eq!(answer.1["error"]["code"], "unauthorized", "{case}");
    }
}

async fn start(flags: &[&str]) -> TestServer {
    let server = TestServer::start_with_args(Mode::Jwt, GENEROUS_LIMITS, flags).await;
    server
        .create_promotion(live_promotion("jwt-1", &[("jwt-sku", 1000)], true))
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_is_honoured_iat_allowed_and_aud_refused_without_the_flag() {
    let server = start(&[]).await;
    let now = now_s();

    let later = claims("nbf-later", &[("nbf", json!(now + 600))]);
    expect(&server, "nbf in the future", later, false).await;
    let past = claims("nbf-past", &[("nbf", json!(now - 60))]);
    expect(&server, "nbf in the past", past, true).await;
    let issued = claims("iat", &[("iat", json!(now - 60))]);
    expect(&server, "iat", issued, true).await;

    let aud = claims("aud-one", &[("aud", json!(AUDIENCE))]);
    expect(&server, "aud without --jwt-audience", aud, false).await;
    let listed = claims("aud-list", &[("aud", json!([AUDIENCE]))]);
    expect(&server, "aud list without --jwt-audience", listed, false).await;
    let iss = claims("iss-any", &[("iss", json!(ISSUER))]);
    expect(&server, "iss without --jwt-issuer", iss, true).await;
    expect(&server, "plain", claims("plain", &[]), true).await;
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_flags_aud_and_iss_must_be_present_and_match() {
    let server = start(&["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]).await;
    let aud = ("aud", json!(AUDIENCE));
    let iss = ("iss", json!(ISSUER));

    let both = claims("both", &[aud.clone(), iss.clone()]);
    expect(&server, "aud and iss", both, true).await;
    let listed = claims("list", &[("aud", json!(["x", AUDIENCE])), iss.clone()]);
    expect(&server, "aud list containing the audience", listed, true).await;

    let wrong = claims("wrong-aud", &[("aud", json!("other")), iss.clone()]);
    expect(&server, "another aud", wrong, false).await;
    let others = claims("others", &[("aud", json!(["x", "y"])), iss.clone()]);
    expect(&server, "aud list without the audience", others, false).await;
    let no_aud = claims("no-aud", std::slice::from_ref(&iss));
    expect(&server, "no aud", no_aud, false).await;

    let wrong = claims("wrong-iss", &[aud.clone(), ("iss", json!("https://x"))]);
    expect(&server, "another iss", wrong, false).await;
    let no_iss = claims("no-iss", std::slice::from_ref(&aud));
    expect(&server, "no iss", no_iss, false).await;
    let neither = claims("neither", &[]);
    expect(&server, "neither", neither, false).await;
    server.stop().await.expect("clean stop");
}
