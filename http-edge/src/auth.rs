//! Who is calling: the operator (admin bearer key) or a shopper (HS256 JWT, or the trusted
//! `X-User-Id` header behind the shop's gateway).
//!
//! Every failure is 401 `unauthorized` with a message that says what is wrong with the
//! credential, never whether a user or key exists.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::claims::ShopperClaims;
use crate::error::AppError;

/// Clock skew tolerated on `exp` and `nbf`, in seconds: shop and server clocks drift a little
/// (api.md allows at most 60).
pub const JWT_LEEWAY_S: u64 = 5;
const _: () = assert!(JWT_LEEWAY_S <= 60);
/// Longest bearer credential looked at; longer ones are refused before any crypto.
pub const BEARER_BYTES_MAX: usize = 4096;
/// The header trusted in `--auth header` mode.
pub const USER_ID_HEADER: &str = "x-user-id";

/// Where the extractors find the credentials to check against. The handlers' state
/// implements it; so can a test's.
pub trait AuthSource {
    /// The operator key (`Authorization: Bearer <admin key>`).
    fn admin_key(&self) -> &[u8];
    /// How shoppers are identified.
    fn shopper_auth(&self) -> &ShopperAuth;
}

/// What a shopper's JWT must carry besides `sub` and `exp` (`--jwt-audience`,
/// `--jwt-issuer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtClaimRules {
    /// `aud` must be this string or a list containing it. None: a token with `aud` is refused
    /// (it was meant for some other service).
    pub audience: Option<String>,
    /// `iss` must be this string. None: `iss` is not looked at.
    pub issuer: Option<String>,
}

/// How shoppers are identified.
pub enum ShopperAuth {
    /// HS256 JWT with `sub` and `exp` (`nbf` honoured, `iat` allowed, `aud` / `iss` as
    /// [`JwtClaimRules`] say), signed with the user secret. The algorithm is pinned: a token
    /// whose header says anything else (including `none`) is refused.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
        rules: JwtClaimRules,
    },
    /// `X-User-Id` as is.
    Header,
}

impl std::fmt::Debug for ShopperAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShopperAuth::Jwt { .. } => f.write_str("ShopperAuth::Jwt"),
            ShopperAuth::Header => f.write_str("ShopperAuth::Header"),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// A string or a list of strings. The library checks it too; looking here as well keeps
    /// the rule of api.md independent of the library's defaults.
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
}

impl ShopperAuth {
    pub fn jwt(secret: &[u8], rules: JwtClaimRules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = JWT_LEEWAY_S;
        let mut required = vec!["exp", "sub"];
        if let Some(audience) = &rules.audience {
            validation.set_audience(&[audience.as_str()]);
            required.push("aud");
        }
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer.as_str()]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        ShopperAuth::Jwt {
            key: DecodingKey::from_secret(secret),
            validation: Box::new(validation),
            rules,
        }
    }

    /// The shopper's user id, or 401.
    pub fn user_id(&self, headers: &HeaderMap) -> Result<String, AppError> {
        let user_id = match self {
            ShopperAuth::Header => headers
                .get(USER_ID_HEADER)
                .ok_or(AppError::Unauthorized("missing X-User-Id header"))?
                .to_str()
                .map_err(|_| AppError::Unauthorized("malformed X-User-Id header"))?
                .to_owned(),
            ShopperAuth::Jwt {
                key,
                validation,
                rules,
            } => {
                let token = bearer(headers)?;
                let claims = decode::<Claims>(token, key, validation)
                    .map_err(|_| {
                        AppError::Unauthorized(
                            "invalid token: malformed, wrongly signed, expired, not yet valid \
                             (nbf), or for another audience or issuer",
                        )
                    })?
                    .claims;
                check_claims(&claims, rules)?;
                claims.sub
            }
        };
        if !seckill_engine::is_valid_id(&user_id) {
            return Err(AppError::Unauthorized(
                "the user id must match [A-Za-z0-9_.:-]{1,64}",
            ));
        }
        Ok(user_id)
    }
}

const UNEXPECTED_AUDIENCE: &str =
    "the token carries an aud claim and this server expects none (see --jwt-audience)";
const WRONG_AUDIENCE: &str = "the token's aud claim is missing or does not name this server";
const WRONG_ISSUER: &str = "the token's iss claim is missing or is not the expected issuer";

/// `aud` and `iss` against the rules (api.md "Shopper JWTs").
fn check_claims(claims: &Claims, rules: &JwtClaimRules) -> Result<(), AppError> {
    match (&rules.audience, &claims.aud) {
        (None, None) => {}
        (None, Some(_)) => return Err(AppError::Unauthorized(UNEXPECTED_AUDIENCE)),
        (Some(audience), aud) => {
            if !aud.as_ref().is_some_and(|aud| names(aud, audience)) {
                return Err(AppError::Unauthorized(WRONG_AUDIENCE));
            }
        }
    }
    if let Some(issuer) = &rules.issuer {
        if claims.iss.as_ref().and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(AppError::Unauthorized(WRONG_ISSUER));
        }
    }
    Ok(())
}

/// True when `aud` (a string, or a list of strings) is or contains `audience`.
fn names(aud: &Value, audience: &str) -> bool {
    match aud {
        Value::String(one) => one == audience,
        Value::Array(many) => many.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// The credential of `Authorization: Bearer <credential>`.
fn bearer(headers: &HeaderMap) -> Result<&str, AppError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AppError::Unauthorized("missing Authorization header"))?
        .to_str()
        .map_err(|_| AppError::Unauthorized("malformed Authorization header"))?;
    let (scheme, credential) = value.split_once(' ').ok_or(AppError::Unauthorized(
        "Authorization must be: Bearer <credential>",
    ))?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(AppError::Unauthorized(
            "Authorization must be: Bearer <credential>",
        ));
    }
    if credential.len() > BEARER_BYTES_MAX {
        return Err(AppError::Unauthorized("credential too long"));
    }
    Ok(credential)
}

/// Compares the presented admin key with the configured one in constant time, so response
/// timing does not reveal how many leading bytes were right.
pub fn check_admin_key(headers: &HeaderMap, admin_key: &[u8]) -> Result<(), AppError> {
    let presented = bearer(headers)?;
    if bool::from(presented.as_bytes().ct_eq(admin_key)) {
        Ok(())
    } else {
        Err(AppError::Unauthorized("wrong admin key"))
    }
}

/// Proof that the caller holds the admin key.
#[derive(Debug)]
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: AuthSource + Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        check_admin_key(&parts.headers, state.admin_key())?;
        Ok(Admin)
    }
}

/// The authenticated shopper's user id.
#[derive(Debug)]
pub struct Shopper(pub String);

impl<S> FromRequestParts<S> for Shopper
where
    S: AuthSource + Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        state.shopper_auth().user_id(&parts.headers).map(Shopper)
    }
}

/// The authenticated shopper with their claims (for the token and purchase routes, whose
/// promotions may admit only some shoppers).
#[derive(Debug)]
pub struct ShopperWithClaims {
    pub user_id: String,
    pub claims: ShopperClaims,
}

impl<S> FromRequestParts<S> for ShopperWithClaims
where
    S: AuthSource + Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let auth = state.shopper_auth();
        let user_id = auth.user_id(&parts.headers)?;
        // Only after the credential was checked: the claims are as trusted as it is.
        let claims = match auth {
            ShopperAuth::Jwt { .. } => ShopperClaims::of_verified_jwt(&parts.headers),
            ShopperAuth::Header => ShopperClaims::of_headers(&parts.headers),
        };
        Ok(ShopperWithClaims { user_id, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;
    use serde_json::json;

    #[derive(Serialize)]
    struct TestClaims<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now_s() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn with_bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii");
        headers.insert(header::AUTHORIZATION, value);
        headers
    }

    fn sign_claims(claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("sign")
    }

    fn sign(secret: &[u8], alg: Algorithm, sub: &str, exp: u64) -> String {
        encode(
            &Header::new(alg),
            &TestClaims { sub, exp },
            &EncodingKey::from_secret(secret),
        )
        .expect("sign")
    }

    #[test]
    fn a_good_token_names_the_user_and_bad_ones_do_not() {
        let auth = ShopperAuth::jwt(b"secret", JwtClaimRules::default());
        let good = sign(b"secret", Algorithm::HS256, "alice", now_s() + 60);
        assert_eq!(auth.user_id(&with_bearer(&good)).expect("valid"), "alice");

        let wrong_key = sign(b"other", Algorithm::HS256, "alice", now_s() + 60);
        let expired = sign(b"secret", Algorithm::HS256, "alice", now_s() - 3600);
        let other_alg = sign(b"secret", Algorithm::HS512, "alice", now_s() + 60);
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.\
                    eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        let bad_sub = sign(b"secret", Algorithm::HS256, "not valid!", now_s() + 60);
        for token in [
            wrong_key.as_str(),
            &expired,
            &other_alg,
            none,
            &bad_sub,
            "garbage",
        ] {
            assert!(auth.user_id(&with_bearer(token)).is_err(), "{token}");
        }
        assert!(auth.user_id(&HeaderMap::new()).is_err());
    }

    #[test]
    fn nbf_is_honoured_and_iat_allowed() {
        let auth = ShopperAuth::jwt(b"secret", JwtClaimRules::default());
        let now = now_s();
        let later = sign_claims(&json!({"sub": "alice", "exp": now + 3600, "nbf": now + 600}));
        assert!(auth.user_id(&with_bearer(&later)).is_err());
        let valid = json!({"sub": "alice", "exp": now + 3600, "nbf": now - 60, "iat": now - 60});
        let valid = sign_claims(&valid);
        assert_eq!(auth.user_id(&with_bearer(&valid)).expect("valid"), "alice");
    }

    #[test]
    fn aud_is_refused_unless_expected_and_then_required() {
        let now = now_s();
        let with_aud = |aud: serde_json::Value| {
            with_bearer(&sign_claims(
                &json!({"sub": "alice", "exp": now + 60, "aud": aud}),
            ))
        };
        let without_aud = with_bearer(&sign_claims(&json!({"sub": "alice", "exp": now + 60})));

        let no_rules = ShopperAuth::jwt(b"secret", JwtClaimRules::default());
        assert!(no_rules.user_id(&with_aud(json!("shop"))).is_err());
        assert!(no_rules.user_id(&with_aud(json!(["shop"]))).is_err());
        assert!(no_rules.user_id(&without_aud).is_ok());

        let rules = JwtClaimRules {
            audience: Some("shop".into()),
            issuer: None,
        };
        let auth = ShopperAuth::jwt(b"secret", rules);
        assert!(auth.user_id(&with_aud(json!("shop"))).is_ok());
        assert!(auth.user_id(&with_aud(json!(["other", "shop"]))).is_ok());
        assert!(auth.user_id(&with_aud(json!("other"))).is_err());
        assert!(auth.user_id(&with_aud(json!(["other"]))).is_err());
        assert!(auth.user_id(&with_aud(json!(7))).is_err());
        assert!(auth.user_id(&without_aud).is_err());
    }

    #[test]
    fn iss_must_match_when_expected() {
        let now = now_s();
        let with_iss = |iss: &str| {
            with_bearer(&sign_claims(
                &json!({"sub": "alice", "exp": now + 60, "iss": iss}),
            ))
        };
        let without_iss = with_bearer(&sign_claims(&json!({"sub": "alice", "exp": now + 60})));

        let no_rules = ShopperAuth::jwt(b"secret", JwtClaimRules::default());
        assert!(no_rules.user_id(&with_iss("anyone")).is_ok());

        let rules = JwtClaimRules {
            audience: None,
            issuer: Some("https://id.shop".into()),
        };
        let auth = ShopperAuth::jwt(b"secret", rules);
        assert!(auth.user_id(&with_iss("https://id.shop")).is_ok());
        assert!(auth.user_id(&with_iss("https://evil")).is_err());
        assert!(auth.user_id(&without_iss).is_err());
    }

    #[test]
    fn admin_key_must_match_exactly() {
        assert!(check_admin_key(&with_bearer("k1"), b"k1").is_ok());
        assert!(check_admin_key(&with_bearer("k"), b"k1").is_err());
        assert!(check_admin_key(&with_bearer("k10"), b"k1").is_err());
        assert!(check_admin_key(&HeaderMap::new(), b"k1").is_err());
    }
}
