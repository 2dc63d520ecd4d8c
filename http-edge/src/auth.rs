//! Who is calling: the operator (admin bearer key) or a shopper (HS256 JWT, or the trusted
//! `X-User-Id` header behind the shop's gateway).
//!
//! Every failure is 401 `unauthorized` with a message that says what is wrong with the
//! credential, never whether a user or key exists.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::AppError;
use crate::state::AppState;

/// Clock skew tolerated on `exp`, in seconds: shop and server clocks drift a little.
pub const JWT_LEEWAY_S: u64 = 5;
/// Longest bearer credential looked at; longer ones are refused before any crypto.
pub const BEARER_BYTES_MAX: usize = 4096;
/// The header trusted in `--auth header` mode.
pub const USER_ID_HEADER: &str = "x-user-id";

/// How shoppers are identified.
pub enum ShopperAuth {
    /// HS256 JWT with `sub` and `exp`, signed with the user secret. The algorithm is pinned:
    /// a token whose header says anything else (including `none`) is refused.
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
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
}

impl ShopperAuth {
    pub fn jwt(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.leeway = JWT_LEEWAY_S;
        ShopperAuth::Jwt {
            key: DecodingKey::from_secret(secret),
            validation: Box::new(validation),
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
            ShopperAuth::Jwt { key, validation } => {
                let token = bearer(headers)?;
                decode::<Claims>(token, key, validation)
                    .map_err(|_| {
                        AppError::Unauthorized(
                            "invalid token: malformed, wrongly signed or expired",
                        )
                    })?
                    .claims
                    .sub
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

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        check_admin_key(&parts.headers, state.admin_key())?;
        Ok(Admin)
    }
}

/// The authenticated shopper's user id.
#[derive(Debug)]
pub struct Shopper(pub String);

impl FromRequestParts<AppState> for Shopper {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        state.shopper_auth().user_id(&parts.headers).map(Shopper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

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
        let auth = ShopperAuth::jwt(b"secret");
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
    fn admin_key_must_match_exactly() {
        assert!(check_admin_key(&with_bearer("k1"), b"k1").is_ok());
        assert!(check_admin_key(&with_bearer("k"), b"k1").is_err());
        assert!(check_admin_key(&with_bearer("k10"), b"k1").is_err());
        assert!(check_admin_key(&HeaderMap::new(), b"k1").is_err());
    }
}
