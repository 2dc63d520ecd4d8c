//! What one population's shoppers saw during a sale: every answer by route, status and
//! code, the requests that got none, the units bought, the proofs of work solved. Each
//! shopper task keeps its own [`Tally`] (no lock on the hot path); they are merged at the end.
//!
//! Also the rule that judges those answers: which ones api.md allows on each route for the
//! requests the runner sends.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::TransportError;
use crate::pow::PowSolution;

/// The three shopper routes of the sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    Challenge,
    Token,
    Purchase,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Challenge => "challenge",
            Route::Token => "token",
            Route::Purchase => "purchase",
        }
    }
}

/// Whether api.md allows `status` / `code` on `route` for a well-formed request from a
/// valid shopper (so 400 `invalid_request`, 401 and 404 are not: they would mean the runner
/// or the server got the contract wrong).
pub fn is_contract_answer(route: Route, status: u16, code: &str) -> bool {
    match (route, status) {
        (Route::Challenge | Route::Token, 200) => true,
        (Route::Purchase, 200 | 201) => true,
        (_, 429) => code == "rate_limited",
        (_, 503) => matches!(code, "unavailable" | "outcome_unknown"),
        (Route::Purchase, 403) => matches!(code, "token_invalid" | "banned" | "not_eligible"),
        (Route::Challenge | Route::Token, 403) => {
            matches!(code, "human_check_failed" | "banned" | "not_eligible")
        }
        (Route::Purchase, 409) => matches!(
            code,
            "not_started" | "ended" | "sold_out" | "insufficient_stock" | "limit_exceeded"
        ),
        (Route::Challenge | Route::Token, 409) => matches!(
            code,
            "not_started" | "ended" | "sold_out" | "limit_exceeded" | "tokens_exhausted"
        ),
        _ => false,
    }
}

/// One population's counts.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// (route, status, code) -> answers; `code` is empty for a success.
    answers: BTreeMap<(Route, u16, String), u64>,
    /// (route, `timeout` | `connection`) -> requests that got no HTTP answer.
    unanswered: BTreeMap<(Route, &'static str), u64>,
    /// Successful answers whose body the runner could not read.
    malformed: BTreeMap<Route, u64>,
    units: u64,
    /// When the last unit was bought, since the sale's start.
    last_unit_at: Option<Duration>,
    solves: u64,
    solve_failures: u64,
    solve_time: Duration,
    hashes: u64,
    /// How the shoppers' tries ended (`bought`, `sold_out`, ...).
    endings: BTreeMap<&'static str, u64>,
}

impl Tally {
    pub fn answer(&mut self, route: Route, status: u16, code: &str) {
        *self
            .answers
            .entry((route, status, code.to_owned()))
            .or_insert(0) += 1;
    }

    pub fn no_answer(&mut self, route: Route, error: &TransportError) {
        let kind = match error {
            TransportError::Timeout => "timeout",
            TransportError::Connection(_) => "connection",
        };
        *self.unanswered.entry((route, kind)).or_insert(0) += 1;
    }

    pub fn malformed(&mut self, route: Route) {
        *self.malformed.entry(route).or_insert(0) += 1;
    }

    /// One unit bought, `at` after the sale's start.
    pub fn unit(&mut self, at: Duration) {
        self.units += 1;
        self.last_unit_at = self.last_unit_at.max(Some(at));
    }

    pub fn solved(&mut self, solution: &PowSolution) {
        self.solves += 1;
        self.solve_time += solution.elapsed;
        self.hashes += solution.hashes;
    }

    pub fn solve_failed(&mut self) {
        self.solve_failures += 1;
    }

    pub fn ended(&mut self, ending: &'static str) {
        *self.endings.entry(ending).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (key, count) in &other.answers {
            *self.answers.entry(key.clone()).or_insert(0) += count;
        }
        for (key, count) in &other.unanswered {
            *self.unanswered.entry(*key).or_insert(0) += count;
        }
        for (route, count) in &other.malformed {
            *self.malformed.entry(*route).or_insert(0) += count;
        }
        self.units += other.units;
        self.last_unit_at = self.last_unit_at.max(other.last_unit_at);
        self.solves += other.solves;
        self.solve_failures += other.solve_failures;
        self.solve_time += other.solve_time;
        self.hashes += other.hashes;
        for (ending, count) in &other.endings {
            *self.endings.entry(*ending).or_insert(0) += count;
        }
    }

    pub fn units(&self) -> u64 {
        self.units
    }

    pub fn last_unit_at(&self) -> Option<Duration> {
        self.last_unit_at
    }

    /// Every request sent, answered or not.
    pub fn requests(&self) -> u64 {
        self.answers.values().sum::<u64>() + self.unanswered.values().sum::<u64>()
    }

    /// Purchases that got no answer: they may have bought a unit the tally does not count.
    pub fn unanswered_purchases(&self) -> u64 {
        self.unanswered
            .iter()
            .filter(|((route, _), _)| *route == Route::Purchase)
            .map(|(_, count)| count)
            .sum()
    }

    pub fn solves(&self) -> u64 {
        self.solves
    }

    pub fn solve_failures(&self) -> u64 {
        self.solve_failures
    }

    pub fn hashes(&self) -> u64 {
        self.hashes
    }

    /// Mean wall time of one solve on its thread, in milliseconds (0 without solves).
    pub fn solve_ms_mean(&self) -> f64 {
        if self.solves == 0 {
            return 0.0;
        }
        self.solve_time.as_secs_f64() * 1000.0 / self.solves as f64
    }

    /// `route status code` -> count (`token 429 rate_limited`, `purchase 201`).
    pub fn answers_text(&self) -> BTreeMap<String, u64> {
        self.answers
            .iter()
            .map(|((route, status, code), count)| {
                let key = if code.is_empty() {
                    format!("{} {status}", route.name())
                } else {
                    format!("{} {status} {code}", route.name())
                };
                (key, *count)
            })
            .collect()
    }

    /// `route kind` -> requests that got no answer.
    pub fn unanswered_text(&self) -> BTreeMap<String, u64> {
        self.unanswered
            .iter()
            .map(|((route, kind), count)| (format!("{} {kind}", route.name()), *count))
            .collect()
    }

    pub fn endings_text(&self) -> BTreeMap<String, u64> {
        self.endings
            .iter()
            .map(|(ending, count)| ((*ending).to_owned(), *count))
            .collect()
    }

    /// Answers api.md does not allow on their route, and unreadable successes, as text.
    pub fn contract_breaches(&self) -> Vec<String> {
        let mut breaches: Vec<String> = self
            .answers
            .iter()
            .filter(|((route, status, code), _)| !is_contract_answer(*route, *status, code))
            .map(|((route, status, code), count)| {
                format!("{count} x {} {status} {code}", route.name())
            })
            .collect();
        breaches.extend(self.malformed.iter().map(|(route, count)| {
            format!("{count} x {} success with an unreadable body", route.name())
        }));
        breaches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_allows_each_routes_own_refusals_only() {
        assert!(is_contract_answer(Route::Token, 429, "rate_limited"));
        assert!(is_contract_answer(Route::Token, 403, "human_check_failed"));
        assert!(is_contract_answer(Route::Token, 409, "tokens_exhausted"));
        assert!(is_contract_answer(Route::Purchase, 201, ""));
        assert!(is_contract_answer(Route::Purchase, 403, "token_invalid"));
        // A purchase has no token gate; a token has no stock of its own to run short of.
        assert!(!is_contract_answer(
            Route::Purchase,
            409,
            "tokens_exhausted"
        ));
        assert!(!is_contract_answer(Route::Token, 409, "insufficient_stock"));
        // Right code, wrong status; and answers that mean a broken request.
        assert!(!is_contract_answer(Route::Token, 403, "rate_limited"));
        assert!(!is_contract_answer(Route::Token, 400, "invalid_request"));
        assert!(!is_contract_answer(Route::Challenge, 404, "not_found"));
        assert!(!is_contract_answer(Route::Purchase, 500, "http_500"));
    }

    #[test]
    fn merged_tallies_add_up_and_name_their_breaches() {
        let mut first = Tally::default();
        first.answer(Route::Token, 200, "");
        first.answer(Route::Purchase, 201, "");
        first.unit(Duration::from_millis(300));
        first.ended("bought");
        let mut second = Tally::default();
        second.answer(Route::Token, 409, "sold_out");
        second.answer(Route::Token, 401, "unauthorized");
        second.no_answer(Route::Purchase, &TransportError::Timeout);
        second.unit(Duration::from_millis(500));
        second.ended("sold_out");
        first.merge(&second);
        assert_eq!(first.units(), 2);
        assert_eq!(first.requests(), 5);
        assert_eq!(first.unanswered_purchases(), 1);
        assert_eq!(first.last_unit_at(), Some(Duration::from_millis(500)));
        assert_eq!(first.answers_text().get("token 409 sold_out"), Some(&1));
        assert_eq!(first.answers_text().get("purchase 201"), Some(&1));
        assert_eq!(first.endings_text().len(), 2);
        assert_eq!(first.contract_breaches(), ["1 x token 401 unauthorized"]);
    }
}
