//! Captcha answers, checked with the provider's siteverify endpoint.
//!
//! hCaptcha, Cloudflare Turnstile and reCAPTCHA share one protocol: a form POST of `secret`,
//! `response` (what the widget gave the shopper's page) and optionally `remoteip`, answered
//! with JSON whose boolean `success` is the verdict. The check fails closed: when the
//! verifier cannot be asked or its answer cannot be read, the shopper gets no token
//! ([`CaptchaRefusal::Unreachable`], 503) rather than a free pass.
//!
//! Each check is bounded: one timeout covers connect, request and the whole answer; the
//! answer is read up to [`CAPTCHA_ANSWER_BYTES_MAX`]; at most [`CAPTCHA_CHECKS_IN_FLIGHT_MAX`]
//! checks wait on the verifier at once, and one more is refused at once instead of queued.
//!
//! HTTPS uses rustls with the `ring` provider, which [`install_crypto_provider`] makes the
//! process default when no other was installed (reqwest is built without a provider of its
//! own, so that no second crypto library is compiled in).

use std::error::Error as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Semaphore;

/// Longest widget response sent on to the verifier; a longer one is refused unasked.
/// (hCaptcha and Turnstile responses are about 2 KiB at most.)
pub const CAPTCHA_RESPONSE_BYTES_MAX: usize = 4096;
/// Most bytes of the verifier's answer read; a longer answer counts as unreadable.
pub const CAPTCHA_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Most checks waiting on the verifier at once.
pub const CAPTCHA_CHECKS_IN_FLIGHT_MAX: usize = 256;
/// How long a check waits for one of those places before it is answered 503.
pub const CAPTCHA_SLOT_WAIT: Duration = Duration::from_millis(200);

/// Error codes with which a verifier says the problem is our configuration, not the
/// shopper's answer: every shopper would be refused, so this is reported as the verifier
/// being unusable (503, logged) rather than as 403s.
const SECRET_ERROR_CODES: [&str; 2] = ["missing-input-secret", "invalid-input-secret"];

/// Why the verifier could not be set up (a start-up error).
#[derive(Debug, Error)]
pub enum CaptchaSetupError {
    #[error("captcha verify URL {url:?} is not an http(s) URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the captcha secret is empty")]
    EmptySecret,
    #[error("the captcha timeout must be at least 1 ms")]
    ZeroTimeout,
    /// E.g. no CA certificates in the system's store (HTTPS checks the verifier's
    /// certificate against them; the store is loaded once, here).
    #[error("cannot build the captcha HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why a captcha answer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CaptchaRefusal {
    /// The verifier said no, or the answer was empty or too long to be one (403).
    #[error("the captcha answer was not accepted")]
    Failed,
    /// The verifier could not be asked or did not answer usably; the check fails closed
    /// (503). The text says what went wrong, for the log.
    #[error("the captcha verifier is unavailable: {0}")]
    Unreachable(String),
}

/// Asks one siteverify endpoint. Built once at start-up and shared: the client keeps its
/// connections to the verifier open between checks.
pub struct CaptchaVerifier {
    client: reqwest::Client,
    verify_url: reqwest::Url,
    secret: String,
    in_flight: Semaphore,
}

impl std::fmt::Debug for CaptchaVerifier {
    // By hand: the secret must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptchaVerifier")
            .field("verify_url", &self.verify_url.as_str())
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The part of the siteverify answer we read; other fields are ignored.
#[derive(Debug, Deserialize)]
struct SiteVerifyAnswer {
    success: bool,
    /// Read loosely (any JSON), since providers differ in what they put here.
    #[serde(default, rename = "error-codes")]
    error_codes: serde_json::Value,
}

impl CaptchaVerifier {
    /// A verifier for `verify_url` with the site's `secret`; each check takes at most
    /// `timeout_ms`, from connecting to the last byte of the answer.
    pub fn new(
        verify_url: String,
        secret: String,
        timeout_ms: u64,
    ) -> Result<Self, CaptchaSetupError> {
        let url = reqwest::Url::parse(&verify_url).map_err(|error| CaptchaSetupError::BadUrl {
            url: verify_url.clone(),
            reason: error.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(CaptchaSetupError::BadUrl {
                url: verify_url,
                reason: "the scheme is not http or https".into(),
            });
        }
        if secret.is_empty() {
            return Err(CaptchaSetupError::EmptySecret);
        }
        if timeout_ms == 0 {
            return Err(CaptchaSetupError::ZeroTimeout);
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            // A verifier that redirects is misconfigured; following would resend the secret
            // to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(CaptchaSetupError::Client)?;
        Ok(Self {
            client,
            verify_url: url,
            secret,
            in_flight: Semaphore::new(CAPTCHA_CHECKS_IN_FLIGHT_MAX),
        })
    }

    /// Accepts `response` (the widget's answer) when the verifier says `success: true`.
    /// `remote_ip` is the shopper's address, passed on as `remoteip` when known.
    pub async fn verify(
        &self,
        response: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<(), CaptchaRefusal> {
        // No answer can be this: refuse without spending a call on it.
        if response.is_empty() || response.len() > CAPTCHA_RESPONSE_BYTES_MAX {
            return Err(CaptchaRefusal::Failed);
        }
        // A short wait for a slot rather than none: junk answers that hold every slot for a
        // verifier round trip would otherwise turn each honest shopper away at once.
        let _permit = tokio::time::timeout(CAPTCHA_SLOT_WAIT, self.in_flight.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                CaptchaRefusal::Unreachable("too many captcha checks in flight".into())
            })?;
        let body = self.ask(response, remote_ip).await?;
        judge(&body)
    }

    /// Posts the form and returns the answer's body (2xx only, at most the cap).
    async fn ask(
        &self,
        response: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<Vec<u8>, CaptchaRefusal> {
        let remote_ip = remote_ip.map(|ip| ip.to_string());
        let mut form = vec![("secret", self.secret.as_str()), ("response", response)];
        if let Some(ip) = &remote_ip {
            form.push(("remoteip", ip.as_str()));
        }
        let mut answer = self
            .client
            .post(self.verify_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|error| CaptchaRefusal::Unreachable(describe(&error)))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(CaptchaRefusal::Unreachable(format!(
                "the verifier answered {status}"
            )));
        }
        read_capped(&mut answer, CAPTCHA_ANSWER_BYTES_MAX).await
    }
}

/// The verdict in a siteverify answer body.
fn judge(body: &[u8]) -> Result<(), CaptchaRefusal> {
    let answer: SiteVerifyAnswer = serde_json::from_slice(body).map_err(|error| {
        CaptchaRefusal::Unreachable(format!(
            "the verifier's answer has no boolean success: {error}"
        ))
    })?;
    if answer.success {
        return Ok(());
    }
    let codes = answer
        .error_codes
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(code) = codes
        .iter()
        .filter_map(|code| code.as_str())
        .find(|code| SECRET_ERROR_CODES.contains(code))
    {
        return Err(CaptchaRefusal::Unreachable(format!(
            "the verifier refused our secret ({code})"
        )));
    }
    Err(CaptchaRefusal::Failed)
}

/// Reads the body, refusing one longer than `bytes_max` before or while reading it.
async fn read_capped(
    answer: &mut reqwest::Response,
    bytes_max: usize,
) -> Result<Vec<u8>, CaptchaRefusal> {
    let too_long =
        || CaptchaRefusal::Unreachable(format!("the verifier's answer is over {bytes_max} bytes"));
    if answer
        .content_length()
        .is_some_and(|length| length > bytes_max as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|error| CaptchaRefusal::Unreachable(describe(&error)))?
    {
        if body.len() + chunk.len() > bytes_max {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error and its causes on one line (reqwest's own text names only the outermost).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        format!("timed out: {error}")
    } else {
        error.to_string()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Installs rustls' `ring` provider as the process default, unless one is installed
/// already. Every reqwest client of this build needs it before it is made (reqwest is
/// built with `rustls-no-provider`, and takes the default when a client is built); tests
/// that make their own clients call it too.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const SECRET: &str = "site-secret-0123";

    fn verifier(url: &str, timeout_ms: u64) -> CaptchaVerifier {
        match CaptchaVerifier::new(url.to_owned(), SECRET.to_owned(), timeout_ms) {
            Ok(verifier) => verifier,
            Err(error) => panic!("verifier for {url}: {error}"),
        }
    }

    /// A one-shot verifier on loopback: answers the first request with `status` and `body`
    /// and returns that request's body (the form), or "" when no request came.
    async fn fake_verifier(
        status: &'static str,
        body: &'static str,
    ) -> (String, JoinHandle<String>) {
        let listener = bind().await;
        let url = format!("http://{}/siteverify", local_addr(&listener));
        let task = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return String::new();
            };
            let form = read_request_body(&mut stream).await;
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            form
        });
        (url, task)
    }

    async fn bind() -> TcpListener {
        match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await {
            Ok(listener) => listener,
            Err(error) => panic!("bind loopback: {error}"),
        }
    }

    fn local_addr(listener: &TcpListener) -> SocketAddr {
        match listener.local_addr() {
            Ok(addr) => addr,
            Err(error) => panic!("local_addr: {error}"),
        }
    }

    /// Reads one HTTP/1.1 request with a content-length body; returns the body as text.
    async fn read_request_body(stream: &mut tokio::net::TcpStream) -> String {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let Ok(read) = stream.read(&mut buffer).await else {
                return String::new();
            };
            if read == 0 || request.len() > 64 * 1024 {
                return String::new();
            }
            request.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&request).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return body.to_owned();
            }
        }
    }

    /// An address where nothing listens: a port just bound and released.
    async fn closed_url() -> String {
        let listener = bind().await;
        let url = format!("http://{}/siteverify", local_addr(&listener));
        drop(listener);
        url
    }

    fn form_fields(form: &str) -> Vec<(String, String)> {
        form.split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| {
                (
                    name.to_owned(),
                    value.replace("%3A", ":").replace("%2E", "."),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn empty_or_oversize_answer_fails_without_asking() {
        // Nothing listens there: had the verifier been asked, the refusal would be Unreachable.
        let verifier = verifier(&closed_url().await, 1_000);
        assert_eq!(verifier.verify("", None).await, Err(CaptchaRefusal::Failed));
        let oversize = "x".repeat(CAPTCHA_RESPONSE_BYTES_MAX + 1);
        assert_eq!(
            verifier.verify(&oversize, None).await,
            Err(CaptchaRefusal::Failed)
        );
    }

    #[tokio::test]
    async fn success_true_is_accepted_and_the_form_carries_secret_response_and_ip() {
        let (url, request) =
            fake_verifier("200 OK", r#"{"success": true, "hostname": "shop.example"}"#).await;
        let remote_ip = Some(IpAddr::from([203, 0, 113, 7]));
        assert_eq!(
            verifier(&url, 2_000)
                .verify("widget-answer", remote_ip)
                .await,
            Ok(())
        );
        let form = form_fields(&request.await.unwrap_or_default());
        assert!(form.contains(&("secret".into(), SECRET.into())), "{form:?}");
        assert!(
            form.contains(&("response".into(), "widget-answer".into())),
            "{form:?}"
        );
        assert!(
            form.contains(&("remoteip".into(), "203.0.113.7".into())),
            "{form:?}"
        );
    }

    #[tokio::test]
    async fn without_an_address_no_remoteip_is_sent() {
        let (url, request) = fake_verifier("200 OK", r#"{"success": true}"#).await;
        assert_eq!(
            verifier(&url, 2_000).verify("widget-answer", None).await,
            Ok(())
        );
        let form = form_fields(&request.await.unwrap_or_default());
        assert!(form.iter().all(|(name, _)| name != "remoteip"), "{form:?}");
        assert!(form.iter().any(|(name, _)| name == "response"), "{form:?}");
    }

    #[tokio::test]
    async fn success_false_fails() {
        let (url, _) = fake_verifier(
            "200 OK",
            r#"{"success": false, "error-codes": ["invalid-input-response"]}"#,
        )
        .await;
        assert_eq!(
            verifier(&url, 2_000).verify("widget-answer", None).await,
            Err(CaptchaRefusal::Failed)
        );
    }

    #[tokio::test]
    async fn a_refused_secret_is_the_verifier_being_unusable_not_the_shopper_failing() {
        let (url, _) = fake_verifier(
            "200 OK",
            r#"{"success": false, "error-codes": ["invalid-input-secret"]}"#,
        )
        .await;
        let refusal = verifier(&url, 2_000).verify("widget-answer", None).await;
        assert!(
            matches!(refusal, Err(CaptchaRefusal::Unreachable(_))),
            "{refusal:?}"
        );
    }

    #[tokio::test]
    async fn unusable_answers_are_unreachable() {
        for (status, body) in [
            ("500 Internal Server Error", r#"{"success": true}"#),
            ("302 Found", r#"{"success": true}"#),
            ("200 OK", "<html>maintenance</html>"),
            ("200 OK", r#"{"success": "yes"}"#),
            ("200 OK", r#"{"hostname": "shop.example"}"#),
        ] {
            let (url, _) = fake_verifier(status, body).await;
            let refusal = verifier(&url, 2_000).verify("widget-answer", None).await;
            assert!(
                matches!(refusal, Err(CaptchaRefusal::Unreachable(_))),
                "{status} {body}: {refusal:?}"
            );
        }
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable() {
        let refusal = verifier(&closed_url().await, 2_000)
            .verify("widget-answer", None)
            .await;
        assert!(
            matches!(refusal, Err(CaptchaRefusal::Unreachable(_))),
            "{refusal:?}"
        );
    }

    #[tokio::test]
    async fn a_verifier_that_never_answers_times_out() {
        let listener = bind().await;
        let url = format!("http://{}/siteverify", local_addr(&listener));
        // Accepts and holds the connection, never answering.
        let holder = tokio::spawn(async move {
            let accepted = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(accepted);
        });
        let started = std::time::Instant::now();
        let refusal = verifier(&url, 200).verify("widget-answer", None).await;
        assert!(
            matches!(refusal, Err(CaptchaRefusal::Unreachable(_))),
            "{refusal:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        holder.abort();
    }

    #[tokio::test]
    async fn debug_does_not_show_the_secret() {
        let text = format!(
            "{:?}",
            verifier("https://verifier.example/siteverify", 1_000)
        );
        assert!(text.contains("verifier.example"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
    }

    #[test]
    fn bad_setup_is_refused() {
        let new = |url: &str, secret: &str, timeout_ms| {
            CaptchaVerifier::new(url.into(), secret.into(), timeout_ms)
        };
        assert!(matches!(
            new("not a url", SECRET, 1_000),
            Err(CaptchaSetupError::BadUrl { .. })
        ));
        assert!(matches!(
            new("ftp://verifier.example/", SECRET, 1_000),
            Err(CaptchaSetupError::BadUrl { .. })
        ));
        assert!(matches!(
            new("https://verifier.example/", "", 1_000),
            Err(CaptchaSetupError::EmptySecret)
        ));
        assert!(matches!(
            new("https://verifier.example/", SECRET, 0),
            Err(CaptchaSetupError::ZeroTimeout)
        ));
    }

    #[test]
    fn judge_reads_success_and_ignores_other_fields() {
        assert_eq!(
            judge(
                br#"{"success": true, "challenge_ts": "2026-11-11T00:00:00Z", "error-codes": []}"#
            ),
            Ok(())
        );
        assert_eq!(
            judge(br#"{"success": false, "error-codes": "odd"}"#),
            Err(CaptchaRefusal::Failed)
        );
        assert!(matches!(judge(b""), Err(CaptchaRefusal::Unreachable(_))));
    }
}
