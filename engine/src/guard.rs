//! Who may buy, and what a shopper must prove first: a promotion's human check and its
//! eligibility rule (api.md, "v2: keeping bots out").
//!
//! The engine holds the rules and decides them; the caller brings the facts: the shopper's
//! claims (from a JWT, a gateway's headers, or a shop's own session when it embeds the
//! engine) and whether the human check passed (the HTTP edge verifies a proof of work or a
//! captcha; an embedding shop runs its own). Both are decided at the gate, before a shard is
//! asked, so a bot storm costs the shards nothing.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::is_valid_id;

/// Values in an `any_of` list, at most.
pub const ANY_OF_VALUES_MAX: usize = 100;
/// Longest `any_of` value, in bytes.
pub const CLAIM_VALUE_BYTES_MAX: usize = 256;

/// The check a shopper passes before a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HumanCheck {
    #[default]
    None,
    /// A proof of work on a challenge from the challenge route.
    Pow,
    /// A captcha widget's answer, checked with the verifier (siteverify).
    Captcha,
}

impl HumanCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            HumanCheck::None => "none",
            HumanCheck::Pow => "pow",
            HumanCheck::Captcha => "captcha",
        }
    }
}

/// What the claim must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EligibilityRule {
    /// A number (or a numeric string) of at least this.
    Min(i64),
    /// A string equal to one of these (or a list holding one of them).
    AnyOf(Vec<String>),
}

/// Only shoppers whose claim `claim` meets `rule` may buy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eligibility {
    pub claim: String,
    pub rule: EligibilityRule,
}

/// A promotion's guard: its human check and who is eligible. The default guards nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionGuard {
    pub human_check: HumanCheck,
    pub eligibility: Option<Eligibility>,
}

impl PromotionGuard {
    /// True for the guard of a promotion created without either rule.
    pub fn is_open(&self) -> bool {
        *self == PromotionGuard::default()
    }
}

/// One claim of a shopper, as the caller read it. Serializable: a cluster node hands the
/// claim a promotion's rule reads to the item's owner with the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClaimValue {
    Text(String),
    Number(f64),
    List(Vec<ClaimValue>),
}

/// Where the engine reads a shopper's claims. Called only for a promotion with an
/// eligibility rule, so a caller may parse its claims lazily. `Sync` so that the engine's
/// futures that borrow one stay `Send`.
pub trait ClaimSource: Sync {
    fn claim(&self, name: &str) -> Option<ClaimValue>;
}

/// A shopper of one claim (or none): what a cluster node forwards with a call, the claim
/// the promotion's eligibility rule reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OneClaim(pub Option<(String, ClaimValue)>);

impl ClaimSource for OneClaim {
    fn claim(&self, name: &str) -> Option<ClaimValue> {
        self.0
            .as_ref()
            .filter(|(held, _)| held == name)
            .map(|(_, value)| value.clone())
    }
}

/// A shopper with no claims.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClaims;

impl ClaimSource for NoClaims {
    fn claim(&self, _name: &str) -> Option<ClaimValue> {
        None
    }
}

impl<S: ClaimSource + ?Sized> ClaimSource for &S {
    fn claim(&self, name: &str) -> Option<ClaimValue> {
        (**self).claim(name)
    }
}

/// What a caller brings to the token route besides the shopper's id.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    pub claims: &'a dyn ClaimSource,
    /// The promotion's human check was verified for this request.
    pub human_check_passed: bool,
}

impl std::fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("human_check_passed", &self.human_check_passed)
            .finish_non_exhaustive()
    }
}

impl Admission<'_> {
    /// No claims and no human check: admitted only to open promotions.
    pub fn none() -> Admission<'static> {
        Admission {
            claims: &NoClaims,
            human_check_passed: false,
        }
    }
}

/// Refuses a shopper whose claims do not meet the promotion's rule (403 `not_eligible`).
pub fn check_eligibility(guard: &PromotionGuard, claims: &dyn ClaimSource) -> Result<()> {
    match &guard.eligibility {
        None => Ok(()),
        Some(rule) if meets(&rule.rule, claims.claim(&rule.claim).as_ref()) => Ok(()),
        Some(_) => Err(Error::NotEligible),
    }
}

/// Refuses a token request whose human check did not pass (403 `human_check_failed`).
pub fn check_human(guard: &PromotionGuard, passed: bool) -> Result<()> {
    if guard.human_check == HumanCheck::None || passed {
        Ok(())
    } else {
        Err(Error::HumanCheckFailed)
    }
}

/// True when `value` meets `rule`; a missing claim never does.
fn meets(rule: &EligibilityRule, value: Option<&ClaimValue>) -> bool {
    let Some(value) = value else { return false };
    match rule {
        EligibilityRule::Min(min) => number_of(value).is_some_and(|n| n >= *min as f64),
        EligibilityRule::AnyOf(allowed) => matches_any(value, allowed),
    }
}

fn number_of(value: &ClaimValue) -> Option<f64> {
    match value {
        ClaimValue::Number(n) if n.is_finite() => Some(*n),
        ClaimValue::Text(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

fn matches_any(value: &ClaimValue, allowed: &[String]) -> bool {
    match value {
        ClaimValue::Text(text) => allowed.iter().any(|a| a == text),
        // A numeric claim (a level of 3) matches the string "3".
        ClaimValue::Number(n) => allowed.iter().any(|a| a.parse::<f64>().ok() == Some(*n)),
        ClaimValue::List(values) => values.iter().any(|v| matches_any(v, allowed)),
    }
}

/// Checks a guard from an operator; `require_token` is the promotion's.
pub fn validate_guard(guard: &PromotionGuard, require_token: bool) -> Result<()> {
    if guard.human_check != HumanCheck::None && !require_token {
        // Without a token the purchase route is open to anyone, so the check would guard
        // nothing: refused rather than silently ineffective.
        return Err(Error::invalid(
            "human_check",
            "needs require_token: the check is passed on the token route",
        ));
    }
    let Some(eligibility) = &guard.eligibility else {
        return Ok(());
    };
    if !is_valid_id(&eligibility.claim) {
        return Err(Error::invalid(
            "eligibility.claim",
            "must match [A-Za-z0-9_.:-]{1,64}",
        ));
    }
    if let EligibilityRule::AnyOf(values) = &eligibility.rule {
        if values.is_empty() || values.len() > ANY_OF_VALUES_MAX {
            return Err(Error::invalid(
                "eligibility.any_of",
                "must hold 1 to 100 values",
            ));
        }
        if values
            .iter()
            .any(|v| v.is_empty() || v.len() > CLAIM_VALUE_BYTES_MAX)
        {
            return Err(Error::invalid(
                "eligibility.any_of",
                "each value must be 1 to 256 bytes",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Claims(HashMap<&'static str, ClaimValue>);

    impl ClaimSource for Claims {
        fn claim(&self, name: &str) -> Option<ClaimValue> {
            self.0.get(name).cloned()
        }
    }

    fn guard(rule: EligibilityRule) -> PromotionGuard {
        PromotionGuard {
            human_check: HumanCheck::None,
            eligibility: Some(Eligibility {
                claim: "level".into(),
                rule,
            }),
        }
    }

    fn with(value: ClaimValue) -> Claims {
        Claims(HashMap::from([("level", value)]))
    }

    #[test]
    fn min_takes_numbers_and_numeric_strings_and_refuses_the_rest() {
        let g = guard(EligibilityRule::Min(3));
        assert_eq!(
            check_eligibility(&g, &with(ClaimValue::Number(3.0))),
            Ok(())
        );
        assert_eq!(
            check_eligibility(&g, &with(ClaimValue::Text(" 7".into()))),
            Ok(())
        );
        for refused in [
            ClaimValue::Number(2.5),
            ClaimValue::Text("gold".into()),
            ClaimValue::Text("NaN".into()),
            ClaimValue::List(vec![ClaimValue::Number(9.0)]),
        ] {
            assert_eq!(
                check_eligibility(&g, &with(refused.clone())),
                Err(Error::NotEligible),
                "{refused:?}"
            );
        }
        assert_eq!(check_eligibility(&g, &NoClaims), Err(Error::NotEligible));
    }

    #[test]
    fn any_of_matches_a_string_a_number_or_a_list_member() {
        let g = guard(EligibilityRule::AnyOf(vec!["gold".into(), "3".into()]));
        assert_eq!(
            check_eligibility(&g, &with(ClaimValue::Text("gold".into()))),
            Ok(())
        );
        assert_eq!(
            check_eligibility(&g, &with(ClaimValue::Number(3.0))),
            Ok(())
        );
        let list = ClaimValue::List(vec![
            ClaimValue::Text("x".into()),
            ClaimValue::Text("gold".into()),
        ]);
        assert_eq!(check_eligibility(&g, &with(list)), Ok(()));
        assert_eq!(
            check_eligibility(&g, &with(ClaimValue::Text("Gold".into()))),
            Err(Error::NotEligible)
        );
    }

    #[test]
    fn the_human_check_refuses_only_when_asked_for_and_not_passed() {
        let mut g = PromotionGuard::default();
        assert_eq!(check_human(&g, false), Ok(()));
        g.human_check = HumanCheck::Pow;
        assert_eq!(check_human(&g, false), Err(Error::HumanCheckFailed));
        assert_eq!(check_human(&g, true), Ok(()));
    }

    #[test]
    fn validation_names_the_field() {
        let field = |g: &PromotionGuard, require_token| match validate_guard(g, require_token) {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let pow = PromotionGuard {
            human_check: HumanCheck::Pow,
            eligibility: None,
        };
        assert_eq!(field(&pow, false), "human_check");
        assert_eq!(validate_guard(&pow, true), Ok(()));
        let mut bad = guard(EligibilityRule::AnyOf(vec![]));
        assert_eq!(field(&bad, true), "eligibility.any_of");
        bad = guard(EligibilityRule::Min(1));
        if let Some(e) = bad.eligibility.as_mut() {
            e.claim = "bad claim".into();
        }
        assert_eq!(field(&bad, true), "eligibility.claim");
    }
}
