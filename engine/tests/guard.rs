//! A promotion's guard (human check, eligibility) as a shop embedding the engine meets it:
//! refusals in the contract's order, the caller's claims and check outcome passed through,
//! and the guard kept across a restart from the log and from a snapshot.

mod common;

use std::collections::HashMap;

use common::{request, spec, start};
use seckill_engine::{
    Admission, ClaimSource, ClaimValue, Eligibility, EligibilityRule, Error, HumanCheck, NoClaims,
    PromotionGuard, PromotionSpec,
};

struct Claims(HashMap<String, ClaimValue>);

impl ClaimSource for Claims {
    fn claim(&self, name: &str) -> Option<ClaimValue> {
        self.0.get(name).cloned()
    }
}

fn level(n: f64) -> Claims {
    Claims(HashMap::from([("level".to_owned(), ClaimValue::Number(n))]))
}

fn guarded(id: &str, stock: u64) -> PromotionSpec {
    let mut s = spec(id, &[("phone", stock, 1)], true);
    s.guard = PromotionGuard {
        human_check: HumanCheck::Pow,
        eligibility: Some(Eligibility {
            claim: "level".into(),
            rule: EligibilityRule::Min(3),
        }),
    };
    s
}

fn admitted(claims: &Claims, passed: bool) -> Admission<'_> {
    Admission {
        claims,
        human_check_passed: passed,
    }
}

#[tokio::test]
async fn a_token_needs_an_eligible_claim_then_a_passed_check() {
    let h = start(2);
    h.create(guarded("p", 5)).await;
    let e = &h.engine;
    let low = level(2.0);
    let high = level(3.0);
    assert_eq!(
        e.issue_token("p", "phone", "alice").await,
        Err(Error::NotEligible),
        "the plain call brings no claims"
    );
    assert_eq!(
        e.issue_token_admitted("p", "phone", "alice", admitted(&low, true))
            .await,
        Err(Error::NotEligible)
    );
    assert_eq!(
        e.issue_token_admitted("p", "phone", "alice", admitted(&high, false))
            .await,
        Err(Error::HumanCheckFailed)
    );
    assert_eq!(
        e.token_precheck("p", "phone", "alice", &high),
        Ok(HumanCheck::Pow)
    );
    assert_eq!(
        e.token_precheck("p", "phone", "alice", &low),
        Err(Error::NotEligible)
    );
    let grant = e
        .issue_token_admitted("p", "phone", "alice", admitted(&high, true))
        .await
        .expect("an eligible shopper who passed the check gets a token");
    // The purchase checks eligibility again (a token does not carry the claims).
    assert_eq!(
        e.purchase_admitted(
            "p",
            "phone",
            "alice",
            request("r1", 1, Some(grant.token.clone())),
            &NoClaims
        )
        .await
        .map(|_| ()),
        Err(Error::NotEligible)
    );
    let bought = e
        .purchase_admitted(
            "p",
            "phone",
            "alice",
            request("r1", 1, Some(grant.token)),
            &high,
        )
        .await
        .expect("bought");
    assert!(bought.created);
}

#[tokio::test]
async fn a_repeated_request_id_gets_its_order_even_without_the_claim() {
    let h = start(1);
    let mut open_purchase = spec("p", &[("phone", 5, 1)], false);
    open_purchase.guard.eligibility = Some(Eligibility {
        claim: "level".into(),
        rule: EligibilityRule::Min(3),
    });
    h.create(open_purchase).await;
    let e = &h.engine;
    let first = e
        .purchase_admitted("p", "phone", "alice", request("r1", 1, None), &level(5.0))
        .await
        .expect("an eligible shopper buys");
    // The shopper's next credential lacks the claim: the retry still answers the order
    // (api.md: "whatever else changed since"), and a new request is refused.
    let again = e
        .purchase_admitted("p", "phone", "alice", request("r1", 1, None), &NoClaims)
        .await
        .expect("the retry answers the original order");
    assert!(!again.created);
    assert_eq!(again.order.order_id, first.order.order_id);
    assert_eq!(
        e.purchase_admitted("p", "phone", "alice", request("r2", 1, None), &NoClaims)
            .await
            .map(|_| ()),
        Err(Error::NotEligible)
    );
    assert_eq!(
        e.purchase_admitted("p", "phone", "bob", request("r1", 1, None), &level(1.0))
            .await
            .map(|_| ()),
        Err(Error::NotEligible)
    );
}

#[tokio::test]
async fn gate_refusals_come_before_the_guard() {
    let h = start(1);
    h.create(guarded("p", 0)).await;
    // Sold out is answered before eligibility and the human check: a storm of bots against
    // a sold-out item costs no verification.
    assert_eq!(
        h.engine.token_precheck("p", "phone", "bot", &NoClaims),
        Err(Error::SoldOut)
    );
    assert_eq!(
        h.engine.token_precheck("p", "nope", "bot", &NoClaims),
        Err(Error::NotFound)
    );
}

#[tokio::test]
async fn the_guard_survives_a_restart_from_the_log_and_from_a_snapshot() {
    let h = start(2);
    let created = h.create(guarded("p", 5)).await;
    assert_eq!(created.guard.human_check, HumanCheck::Pow);
    let h = h.restart().await;
    let after_log = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(after_log.guard, created.guard);
    assert_eq!(
        h.engine.issue_token("p", "phone", "alice").await,
        Err(Error::NotEligible),
        "replayed from the log, the rule still holds"
    );
    h.engine.snapshot().await.expect("snapshot");
    let h = h.restart().await;
    let after_snapshot = h.engine.promotion_stats("p").await.expect("stats");
    assert_eq!(after_snapshot.guard, created.guard);
    assert_eq!(
        h.engine.public_promotion("p").expect("public").guard,
        created.guard
    );
    // The same body again is a retry; another guard is another body.
    let again = h
        .engine
        .create_promotion(guarded("p", 5))
        .await
        .expect("retry");
    assert!(!again.created);
    let mut other = guarded("p", 5);
    other.guard.human_check = HumanCheck::Captcha;
    assert_eq!(
        h.engine.create_promotion(other).await.map(|c| c.created),
        Err(Error::AlreadyExists)
    );
}

#[tokio::test]
async fn an_open_promotion_needs_nothing() {
    let h = start(1);
    h.create(spec("open", &[("phone", 5, 1)], true)).await;
    h.engine
        .issue_token("open", "phone", "alice")
        .await
        .expect("no guard, no claims needed");
}
