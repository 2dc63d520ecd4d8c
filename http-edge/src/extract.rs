//! Extractors whose every rejection is an [`AppError`]: axum's own rejections answer in plain
//! text, which would break the contract's error body.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// Largest accepted request body (api.md: 64 KiB, else 413).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// A body over the limit is still read and thrown away up to this size, so the client reads
/// our 413 instead of a connection reset while it is still sending. Past it, we stop reading.
pub const BODY_DRAIN_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Whether a write's body is still arriving. The request-timeout layer puts one in the
/// extensions of every write and [`JsonBody`] sets it while it reads: a write that times out
/// while its body is still arriving never reached the engine (503 `unavailable`, "not done"),
/// one that times out later may have (503 `outcome_unknown`).
#[derive(Debug, Clone, Default)]
pub struct BodyPending(Arc<AtomicBool>);

impl BodyPending {
    pub fn set(&self, pending: bool) {
        self.0.store(pending, Ordering::Release);
    }

    pub fn is_pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A JSON body: at most [`BODY_BYTES_MAX`], and every parse failure is a 400 naming the field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, AppError> {
        parse_json(&read_body(request).await?).map(JsonBody)
    }
}

/// A JSON body that may be absent: an empty (or all-whitespace) body is `None`. For routes
/// whose body only some requests need (the token route's human-check answer).
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, AppError> {
        let bytes = read_body(request).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        parse_json(&bytes).map(|value| OptionalJsonBody(Some(value)))
    }
}

/// The body of `request`, at most [`BODY_BYTES_MAX`], with its [`BodyPending`] flag set
/// while it arrives.
async fn read_body(mut request: Request) -> Result<Bytes, AppError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_DRAIN_BYTES_MAX as u64) {
        return Err(AppError::PayloadTooLarge);
    }
    let pending = request.extensions_mut().remove::<BodyPending>();
    if let Some(pending) = &pending {
        pending.set(true);
    }
    let bytes = read_limited(request.into_body()).await;
    if let Some(pending) = &pending {
        pending.set(false);
    }
    bytes
}

/// Reads a body of at most [`BODY_BYTES_MAX`] bytes.
async fn read_limited(mut body: Body) -> Result<Bytes, AppError> {
    // Small bodies arrive in one frame: keep it as is, copy only when there are more.
    let mut first: Option<Bytes> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut seen_bytes: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| AppError::invalid("body", "could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen_bytes = seen_bytes.saturating_add(data.len());
        if seen_bytes > BODY_DRAIN_BYTES_MAX {
            return Err(AppError::PayloadTooLarge);
        }
        if seen_bytes > BODY_BYTES_MAX {
            // Keep reading (and dropping) so the client gets the 413, not a reset.
            first = None;
            buffer = Vec::new();
            continue;
        }
        match first.take() {
            None if buffer.is_empty() => first = Some(data),
            Some(previous) => {
                buffer.extend_from_slice(&previous);
                buffer.extend_from_slice(&data);
            }
            None => buffer.extend_from_slice(&data),
        }
    }
    if seen_bytes > BODY_BYTES_MAX {
        return Err(AppError::PayloadTooLarge);
    }
    Ok(first.unwrap_or_else(|| Bytes::from(buffer)))
}

/// Parses JSON into `T`; the error names the field (`items[0].stock`), or `body` when the
/// document itself is broken.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // The plain parser first: good requests are the common case, and tracking the path
    // costs on every field. Only a failure is parsed again to find the field.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => Err(describe_json_error::<T>(bytes)),
    }
}

/// Why `bytes` is not a `T`, naming the field.
fn describe_json_error<T: DeserializeOwned>(bytes: &[u8]) -> AppError {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Ok(_) => AppError::invalid("body", "trailing characters after the JSON value"),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            let reason = without_position(&inner.to_string());
            let field = match missing_field(&reason) {
                Some(name) if is_root(&path) => name.to_owned(),
                Some(name) => format!("{path}.{name}"),
                None if is_root(&path) || inner.is_syntax() || inner.is_eof() => "body".to_owned(),
                None => path,
            };
            AppError::Invalid { field, reason }
        }
    }
}

fn is_root(path: &str) -> bool {
    path.is_empty() || path == "."
}

/// serde_json ends messages with " at line L column C", which means nothing to the caller.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The name in serde's "missing field `name`" message.
fn missing_field(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Path parameters; a path that cannot be decoded (bad percent-encoding, not UTF-8) names
/// nothing that exists: 404.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(_) => Err(AppError::Engine(seckill_engine::Error::NotFound)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        sku: String,
        stock: u64,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Spec {
        name: String,
        items: Vec<Item>,
    }

    fn field_of(json: &str) -> String {
        match parse_json::<Spec>(json.as_bytes()) {
            Err(AppError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"items": []}"#), "name");
        assert_eq!(field_of(r#"{"name": 5, "items": []}"#), "name");
        assert_eq!(
            field_of(r#"{"name": "n", "items": [{"sku": "a", "stock": -1}]}"#),
            "items[0].stock"
        );
        assert_eq!(
            field_of(r#"{"name": "n", "items": [{"sku": "a", "stock": 1e30}]}"#),
            "items[0].stock"
        );
        assert_eq!(
            field_of(r#"{"name": "n", "items": [{"stock": 1}]}"#),
            "items[0].sku"
        );
        assert_eq!(field_of("{"), "body");
        assert_eq!(field_of(""), "body");
        assert_eq!(field_of("[]"), "body");
        assert_eq!(field_of(r#"{"name": "n", "items": []} x"#), "body");
    }
}
