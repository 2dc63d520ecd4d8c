//! A shopper's claims, for the promotions that admit only some shoppers (api.md
//! "eligibility"): read from the JWT's payload, or in `--auth header` mode from the headers
//! `X-User-Claim-<name>` that the shop's gateway sets.
//!
//! Taken only from a credential the auth extractor has already checked, and parsed only when
//! a promotion's rule asks for a claim: the sold-out storm of an open promotion pays one
//! reference-count increment (the JWT's header value is shared, not copied).

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use seckill_engine::{ClaimSource, ClaimValue};

/// The header prefix of a claim in `--auth header` mode (header names are lower case).
pub const CLAIM_HEADER_PREFIX: &str = "x-user-claim-";
/// Most elements of a list claim looked at.
const LIST_CLAIM_ITEMS_MAX: usize = 100;

/// The claims of one authenticated shopper.
#[derive(Debug)]
pub enum ShopperClaims {
    /// The `Authorization` header of a JWT whose signature and claims were checked; its
    /// payload is decoded at the first claim asked for.
    Jwt {
        authorization: HeaderValue,
        payload: OnceLock<Option<Map<String, Value>>>,
    },
    /// The `X-User-Claim-*` headers: (lower-case claim name, value).
    Headers(Vec<(String, String)>),
}

impl ShopperClaims {
    /// The claims of a JWT shopper; call only once the token in `headers` was verified.
    pub fn of_verified_jwt(headers: &HeaderMap) -> Self {
        ShopperClaims::Jwt {
            authorization: headers
                .get(header::AUTHORIZATION)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("")),
            payload: OnceLock::new(),
        }
    }

    /// The claims a trusted gateway passed as headers.
    pub fn of_headers(headers: &HeaderMap) -> Self {
        let claims = headers
            .iter()
            .filter_map(|(name, value)| {
                let claim = name.as_str().strip_prefix(CLAIM_HEADER_PREFIX)?;
                Some((claim.to_owned(), value.to_str().ok()?.trim().to_owned()))
            })
            .collect();
        ShopperClaims::Headers(claims)
    }
}

impl ClaimSource for ShopperClaims {
    fn claim(&self, name: &str) -> Option<ClaimValue> {
        match self {
            ShopperClaims::Jwt {
                authorization,
                payload,
            } => payload
                .get_or_init(|| decode_payload(authorization))
                .as_ref()?
                .get(name)
                .and_then(claim_value),
            ShopperClaims::Headers(claims) => header_claim(claims, name),
        }
    }
}

/// The claim `name` among the headers. A claim sent twice counts as absent: a gateway that
/// appends its header to one the client sent would otherwise let the client's own value
/// in (`any_of` matches any member of a list).
fn header_claim(claims: &[(String, String)], name: &str) -> Option<ClaimValue> {
    let mut values = claims
        .iter()
        .filter(|(claim, _)| claim.eq_ignore_ascii_case(name));
    let (_, value) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Some(ClaimValue::Text(value.clone()))
}

/// The JSON payload of `Bearer <header>.<payload>.<signature>`; None when it is not one
/// (it was verified, so that only happens for a credential this module was wrongly given).
fn decode_payload(authorization: &HeaderValue) -> Option<Map<String, Value>> {
    let credential = authorization.to_str().ok()?.split_once(' ')?.1.trim();
    let payload = credential.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A JSON claim as the engine compares it: strings, numbers, and lists of those.
fn claim_value(value: &Value) -> Option<ClaimValue> {
    match value {
        Value::String(text) => Some(ClaimValue::Text(text.clone())),
        Value::Number(number) => number.as_f64().map(ClaimValue::Number),
        Value::Array(items) => Some(ClaimValue::List(
            items
                .iter()
                .take(LIST_CLAIM_ITEMS_MAX)
                .filter(|item| !item.is_array())
                .filter_map(claim_value)
                .collect(),
        )),
        Value::Bool(_) | Value::Null | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_with_payload(json: &str) -> HeaderMap {
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mut headers = HeaderMap::new();
        let value = format!("Bearer eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).expect("ascii"),
        );
        headers
    }

    #[test]
    fn jwt_claims_are_read_from_the_payload() {
        let claims = ShopperClaims::of_verified_jwt(&jwt_with_payload(
            r#"{"sub":"u","level":5,"tier":"gold","roles":["a","vip"],"flag":true}"#,
        ));
        assert_eq!(claims.claim("level"), Some(ClaimValue::Number(5.0)));
        assert_eq!(claims.claim("tier"), Some(ClaimValue::Text("gold".into())));
        assert_eq!(
            claims.claim("roles"),
            Some(ClaimValue::List(vec![
                ClaimValue::Text("a".into()),
                ClaimValue::Text("vip".into())
            ]))
        );
        assert_eq!(claims.claim("flag"), None);
        assert_eq!(claims.claim("missing"), None);
    }

    #[test]
    fn header_claims_match_their_name_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-claim-level", HeaderValue::from_static(" 4 "));
        headers.append("x-user-claim-role", HeaderValue::from_static("a"));
        headers.append("x-user-claim-role", HeaderValue::from_static("b"));
        headers.insert("x-user-id", HeaderValue::from_static("u"));
        let claims = ShopperClaims::of_headers(&headers);
        assert_eq!(claims.claim("Level"), Some(ClaimValue::Text("4".into())));
        assert_eq!(
            claims.claim("role"),
            None,
            "a claim header sent twice is not believed"
        );
        assert_eq!(claims.claim("id"), None, "only the claim prefix counts");
    }
}
