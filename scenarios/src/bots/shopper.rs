//! One shopper's try at the item: a challenge and its solution when the promotion asks for a
//! proof of work, then a token, then a purchase; and what the shopper does with each answer.
//!
//! Bots and people follow the same steps; they differ in their [`Conduct`] (how long they
//! wait before trying again, how many requests they have patience for) and in who solves
//! their challenges ([`Solver`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::mode::Mode;
use super::tally::{Route, Tally};
use crate::client::{Api, Method, StatusCode};
use crate::pow::{self, SharedSolver, SolveError};

/// Requests in a row that get no answer before a shopper gives up (the server is gone).
const UNANSWERED_IN_A_ROW_MAX: u32 = 5;
/// Pause after a request that got no answer.
const UNANSWERED_PAUSE: Duration = Duration::from_millis(100);

/// The paths of the sale's item.
#[derive(Debug, Clone)]
pub struct ItemPaths {
    challenge: String,
    token: String,
    purchase: String,
}

impl ItemPaths {
    pub fn of(promotion_id: &str, sku: &str) -> ItemPaths {
        let item = format!("/promotions/{promotion_id}/items/{sku}");
        ItemPaths {
            challenge: format!("{item}/challenge"),
            token: format!("{item}/token"),
            purchase: format!("{item}/purchase"),
        }
    }

    fn of_route(&self, route: Route) -> &str {
        match route {
            Route::Challenge => &self.challenge,
            Route::Token => &self.token,
            Route::Purchase => &self.purchase,
        }
    }
}

/// What every shopper of one mode's sale shares.
#[derive(Debug)]
pub struct Sale {
    pub mode: Mode,
    pub paths: ItemPaths,
    /// The moment both populations start.
    pub start: Instant,
    /// Nobody sends a request after this.
    pub deadline: Instant,
    /// Set by the first bot that learns the item sold out: the farm coordinates its ids and
    /// stops them all (people each learn it from their own answers).
    pub farm_stop: Arc<AtomicBool>,
}

/// How a population behaves.
#[derive(Debug, Clone)]
pub struct Conduct {
    /// Wait before trying again after 429, 503 or `tokens_exhausted`.
    pub backoff: Duration,
    /// Requests one shopper sends at most before giving up.
    pub requests_max: u64,
    /// Stops when the farm does ([`Sale::farm_stop`]).
    pub heeds_farm_stop: bool,
}

/// A population's client and conduct.
#[derive(Debug)]
pub struct Population {
    pub api: Api,
    pub conduct: Conduct,
}

/// One shopper id behind one client address.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub user: String,
    credential: (&'static str, String),
}

impl Shopper {
    pub fn new(user: String, address: &str) -> Shopper {
        let credential = credential(&user, address);
        Shopper { user, credential }
    }
}

/// Who solves a shopper's challenges.
#[derive(Debug, Clone, Copy)]
pub enum Solver<'a> {
    /// A thread of the shopper's own (a person's browser).
    OwnThread,
    /// The worker of the shopper's address (a farm machine), shared with its other ids.
    Shared(&'a SharedSolver),
}

/// How a shopper's try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Bought,
    SoldOut,
    /// Refused for good (`limit_exceeded`, `banned`, `ended`, ... or an answer the runner
    /// could not read).
    Refused,
    /// Out of patience or of answers.
    GaveUp,
    /// The mode's time bound came first.
    TimeUp,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Bought => "bought",
            Ending::SoldOut => "sold_out",
            Ending::Refused => "refused",
            Ending::GaveUp => "gave_up",
            Ending::TimeUp => "time_up",
        }
    }
}

/// What a shopper does with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// The step succeeded: on to the next one.
    Next,
    /// The same request again, after the back-off (429, 503): a request refused by a limiter
    /// was not looked at, so its proof of work, token and request id are still good.
    Again,
    /// A new challenge and token after the back-off: the token gate is full for now.
    Requeue,
    /// A new challenge and token at once: the proof of work or the token was refused.
    Restart,
    SoldOut,
    Stop,
}

/// The reaction to `status` / `code` on `route` (pure, so that the rules can be read in one
/// place and tested).
pub fn classify(route: Route, status: u16, code: &str) -> Reaction {
    if (200..300).contains(&status) {
        return Reaction::Next;
    }
    match (status, code) {
        (429, _) | (503, _) => Reaction::Again,
        (409, "sold_out" | "insufficient_stock") => Reaction::SoldOut,
        (409, "tokens_exhausted") if route == Route::Token => Reaction::Requeue,
        (403, "human_check_failed") => Reaction::Restart,
        (403, "token_invalid") if route == Route::Purchase => Reaction::Restart,
        _ => Reaction::Stop,
    }
}

/// The credential header of `user` behind client `address`, in the shape the load client
/// sends (one `name: value` line): the value carries a second header line, the
/// `X-Forwarded-For` by which the runner, a trusted proxy of the server, stands in for many
/// client addresses. Both parts are made by the runner (identifiers and dotted quads), so no
/// CR or LF from elsewhere reaches a request.
pub fn credential(user: &str, address: &str) -> (&'static str, String) {
    ("x-user-id", format!("{user}\r\nx-forwarded-for: {address}"))
}

/// `POST .../challenge` answer (api.md); `expires_at` is not needed.
#[derive(Debug, Deserialize)]
struct ChallengeView {
    challenge: String,
    difficulty_bits: u32,
}

/// `POST .../token` answer.
#[derive(Debug, Deserialize)]
struct TokenView {
    token: String,
}

/// Where a shopper is in its try.
#[derive(Debug, Default)]
struct Progress {
    /// A solved challenge not yet spent: (challenge, nonce).
    pow: Option<(String, String)>,
    token: Option<String>,
    /// Purchase attempts begun; each has its own request id.
    attempt: u32,
}

impl Progress {
    fn next_route(&self, pow_needed: bool) -> Route {
        if self.token.is_some() {
            Route::Purchase
        } else if pow_needed && self.pow.is_none() {
            Route::Challenge
        } else {
            Route::Token
        }
    }

    fn restart(&mut self) {
        self.pow = None;
        self.token = None;
        self.attempt += 1;
    }

    fn body(&self, route: Route, user: &str) -> Option<serde_json::Value> {
        match route {
            Route::Challenge => None,
            Route::Token => self
                .pow
                .as_ref()
                .map(|(challenge, nonce)| json!({"pow": {"challenge": challenge, "nonce": nonce}})),
            Route::Purchase => Some(json!({
                "request_id": format!("{user}.{}", self.attempt),
                "token": self.token,
            })),
        }
    }
}

/// Plays one shopper until it bought, was refused for good, gave up or ran out of time.
pub async fn play_shopper(
    sale: &Sale,
    population: &Population,
    shopper: &Shopper,
    solver: Solver<'_>,
    tally: &mut Tally,
) -> Ending {
    let ending = try_to_buy(sale, population, shopper, solver, tally).await;
    tally.ended(ending.name());
    ending
}

async fn try_to_buy(
    sale: &Sale,
    population: &Population,
    shopper: &Shopper,
    solver: Solver<'_>,
    tally: &mut Tally,
) -> Ending {
    let conduct = &population.conduct;
    let mut progress = Progress::default();
    let mut requests = 0u64;
    let mut unanswered_in_a_row = 0u32;
    loop {
        if Instant::now() >= sale.deadline {
            return Ending::TimeUp;
        }
        if conduct.heeds_farm_stop && sale.farm_stop.load(Ordering::Relaxed) {
            return Ending::SoldOut;
        }
        if requests >= conduct.requests_max {
            return Ending::GaveUp;
        }
        requests += 1;
        let route = progress.next_route(sale.mode.pow());
        let body = progress.body(route, &shopper.user);
        let path = sale.paths.of_route(route);
        let sent = population
            .api
            .shopper(Method::POST, path, &shopper.credential, body.as_ref())
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(error) => {
                tally.no_answer(route, &error);
                unanswered_in_a_row += 1;
                if unanswered_in_a_row >= UNANSWERED_IN_A_ROW_MAX {
                    return Ending::GaveUp;
                }
                pause(UNANSWERED_PAUSE, sale.deadline).await;
                continue;
            }
        };
        unanswered_in_a_row = 0;
        let status = reply.status;
        let code = if status.is_success() {
            String::new()
        } else {
            reply.error_code()
        };
        tally.answer(route, status.as_u16(), &code);
        match classify(route, status.as_u16(), &code) {
            Reaction::Next => {
                let body = &reply.body;
                let advanced = advance(sale, route, status, body, solver, &mut progress, tally);
                if let Some(ending) = advanced.await {
                    return ending;
                }
            }
            Reaction::Again => pause(conduct.backoff, sale.deadline).await,
            Reaction::Requeue => {
                progress.restart();
                pause(conduct.backoff, sale.deadline).await;
            }
            Reaction::Restart => progress.restart(),
            Reaction::SoldOut => return Ending::SoldOut,
            Reaction::Stop => return Ending::Refused,
        }
    }
}

/// Takes a successful answer of `route` in; `Some` when the try is over.
async fn advance(
    sale: &Sale,
    route: Route,
    status: StatusCode,
    body: &[u8],
    solver: Solver<'_>,
    progress: &mut Progress,
    tally: &mut Tally,
) -> Option<Ending> {
    match route {
        Route::Challenge => {
            let Ok(view) = serde_json::from_slice::<ChallengeView>(body) else {
                tally.malformed(route);
                return Some(Ending::Refused);
            };
            match solve(solver, view.challenge.clone(), view.difficulty_bits).await {
                Ok(solution) => {
                    tally.solved(&solution);
                    progress.pow = Some((view.challenge, solution.nonce));
                    None
                }
                Err(SolveError::Cancelled) => Some(Ending::SoldOut),
                Err(_) => {
                    tally.solve_failed();
                    Some(Ending::GaveUp)
                }
            }
        }
        Route::Token => {
            let Ok(view) = serde_json::from_slice::<TokenView>(body) else {
                tally.malformed(route);
                return Some(Ending::Refused);
            };
            // The proof of work is spent on the token it bought.
            progress.pow = None;
            progress.token = Some(view.token);
            None
        }
        Route::Purchase => {
            // 201 a new order; 200 the same order again, for a request id retried after an
            // answer was lost: one unit either way.
            debug_assert!(status == StatusCode::CREATED || status == StatusCode::OK);
            tally.unit(sale.start.elapsed());
            Some(Ending::Bought)
        }
    }
}

async fn solve(
    solver: Solver<'_>,
    challenge: String,
    difficulty_bits: u32,
) -> Result<pow::PowSolution, SolveError> {
    match solver {
        Solver::OwnThread => pow::solve_on_own_thread(challenge, difficulty_bits).await,
        Solver::Shared(shared) => shared.solve(challenge, difficulty_bits).await,
    }
}

/// Sleeps `wait`, but never past `deadline`.
async fn pause(wait: Duration, deadline: Instant) {
    let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Credentials;
    use crate::scenario::AuthMode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn limiter_refusals_repeat_the_same_request_and_a_sold_out_item_ends_the_try() {
        assert_eq!(classify(Route::Token, 429, "rate_limited"), Reaction::Again);
        assert_eq!(
            classify(Route::Purchase, 503, "outcome_unknown"),
            Reaction::Again
        );
        assert_eq!(classify(Route::Token, 409, "sold_out"), Reaction::SoldOut);
        assert_eq!(
            classify(Route::Purchase, 409, "insufficient_stock"),
            Reaction::SoldOut
        );
        assert_eq!(classify(Route::Challenge, 200, ""), Reaction::Next);
        assert_eq!(classify(Route::Purchase, 201, ""), Reaction::Next);
    }

    #[test]
    fn refused_proofs_and_tokens_start_over_and_final_refusals_stop() {
        assert_eq!(
            classify(Route::Token, 409, "tokens_exhausted"),
            Reaction::Requeue
        );
        assert_eq!(
            classify(Route::Token, 403, "human_check_failed"),
            Reaction::Restart
        );
        assert_eq!(
            classify(Route::Purchase, 403, "token_invalid"),
            Reaction::Restart
        );
        assert_eq!(
            classify(Route::Purchase, 409, "limit_exceeded"),
            Reaction::Stop
        );
        assert_eq!(classify(Route::Token, 403, "banned"), Reaction::Stop);
        assert_eq!(
            classify(Route::Token, 400, "invalid_request"),
            Reaction::Stop
        );
    }

    #[test]
    fn the_steps_follow_challenge_token_purchase_and_restart_from_the_top() {
        let mut progress = Progress::default();
        assert_eq!(progress.next_route(true), Route::Challenge);
        assert_eq!(progress.next_route(false), Route::Token);
        progress.pow = Some(("c".into(), "7".into()));
        assert_eq!(progress.next_route(true), Route::Token);
        let token_body = progress.body(Route::Token, "u").expect("a pow body");
        assert_eq!(token_body, json!({"pow": {"challenge": "c", "nonce": "7"}}));
        progress.token = Some("t".into());
        assert_eq!(progress.next_route(true), Route::Purchase);
        let first = progress
            .body(Route::Purchase, "u")
            .expect("a purchase body");
        progress.restart();
        assert_eq!(progress.next_route(true), Route::Challenge);
        progress.token = Some("t2".into());
        let second = progress
            .body(Route::Purchase, "u")
            .expect("a purchase body");
        assert_ne!(first["request_id"], second["request_id"]);
        assert_eq!(second["token"], "t2");
    }

    #[tokio::test]
    async fn the_credential_carries_the_client_address_as_a_header_of_its_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 4096];
            let read = socket.read(&mut buffer).await.expect("read");
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&buffer[..read]).into_owned()
        });
        let credentials = Credentials {
            admin_key: "k".into(),
            auth: AuthMode::Header,
            user_secret: String::new(),
        };
        let api = Api::new(&format!("http://{address}"), credentials, 1);
        let shopper = Shopper::new("b00001-0000002".into(), "198.18.0.1");
        let reply = api
            .shopper(
                Method::POST,
                "/x",
                &shopper.credential,
                None::<&serde_json::Value>,
            )
            .await
            .expect("an answer");
        assert_eq!(reply.status, StatusCode::OK);
        let request = server.await.expect("the fake server");
        let lines: Vec<&str> = request.split("\r\n").collect();
        assert!(lines.contains(&"x-user-id: b00001-0000002"), "{request}");
        assert!(lines.contains(&"x-forwarded-for: 198.18.0.1"), "{request}");
    }
}
