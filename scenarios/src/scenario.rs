//! The scenario file: what a sale looks like (the promotion) and who storms it (the waves).
//!
//! A scenario is plain TOML so that a shop can write its own; `scenarios/README.md` documents
//! every field. Parsing validates everything up front: a run must never fail half-way
//! because of a typo in the file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a scenario file cannot be played.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("scenario {name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// How shoppers prove who they are (api.md "Who is calling").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// `X-User-Id: <user>`, trusted as is.
    #[default]
    Header,
    /// `Authorization: Bearer <HS256 JWT>` signed with the user secret.
    Jwt,
}

/// A whole scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in promotion ids and reports.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds every random choice (which SKU, pay or cancel); a failing run prints it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Auth mode for shoppers; `--auth` on the command line overrides it.
    #[serde(default)]
    pub auth: AuthMode,
    pub promotion: PromotionPlan,
    /// Played one after the other.
    #[serde(rename = "wave")]
    pub waves: Vec<Wave>,
    #[serde(default)]
    pub expect: Expectations,
}

fn default_seed() -> u64 {
    1
}

/// The promotion the runner creates and starts before the first wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionPlan {
    #[serde(default = "default_payment_timeout_s")]
    pub payment_timeout_s: u32,
    #[serde(default = "default_true")]
    pub require_token: bool,
    #[serde(default = "default_token_multiplier")]
    pub token_multiplier: u32,
    /// How long the promotion window lasts once started.
    #[serde(default = "default_duration_s")]
    pub duration_s: u64,
    #[serde(rename = "items")]
    pub item_groups: Vec<ItemGroup>,
}

fn default_payment_timeout_s() -> u32 {
    900
}
fn default_true() -> bool {
    true
}
fn default_token_multiplier() -> u32 {
    5
}
fn default_duration_s() -> u64 {
    3600
}

/// `count` identical items; with `count > 1` the sku is a prefix (`phone-0001`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemGroup {
    pub sku: String,
    #[serde(default = "default_count")]
    pub count: u32,
    pub stock: u64,
    #[serde(default)]
    pub price_cents: i64,
    #[serde(default = "default_per_user_limit")]
    pub per_user_limit: u32,
    /// Relative chance that a shopper picks an item of this group (default 1 per item).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_count() -> u32 {
    1
}
fn default_per_user_limit() -> u32 {
    1
}
fn default_weight() -> f64 {
    1.0
}

/// One concrete item of the promotion, after groups are expanded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemPlan {
    pub sku: String,
    pub stock: u64,
    pub price_cents: i64,
    pub per_user_limit: u32,
    pub weight: f64,
}

/// A crowd of shoppers arriving together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub name: String,
    /// How many shoppers (distinct users) play this wave; `--scale` multiplies it.
    pub shoppers: u64,
    /// Users are `u<first_user + i>`; waves with overlapping ranges replay the same users.
    #[serde(default)]
    pub first_user: u64,
    /// Closed loop: this many shoppers at a time, each starting when the last one finished.
    /// Open loop (with `rate_per_s`): the most requests in flight (the connection count).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Open loop: shoppers arrive at this rate whatever the server does.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Purchases each shopper tries (each with a fresh token and request id); above the
    /// per-user limit the extra ones must be refused.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_quantity")]
    pub quantity: u32,
    /// What a buyer does with an accepted order; weights, normalised.
    #[serde(default)]
    pub after_purchase: AfterPurchase,
    /// After the wave, wait until every order left pending has expired (reserved == 0).
    #[serde(default)]
    pub wait_for_expiry: bool,
    /// Restart scenarios: SIGKILL the spawned server once this fraction of the wave's
    /// shoppers has finished, restart it on the same data directory, and carry on.
    #[serde(default)]
    pub kill_at: Option<f64>,
}

fn default_concurrency() -> u32 {
    64
}
fn default_attempts() -> u32 {
    1
}
fn default_quantity() -> u32 {
    1
}

/// Weights of what a buyer does next; all zero means "leave it pending".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterPurchase {
    #[serde(default)]
    pub pay: f64,
    #[serde(default)]
    pub cancel: f64,
    /// Leave the order pending: it expires after `payment_timeout_s`.
    #[serde(default = "default_leave")]
    pub leave: f64,
}

fn default_leave() -> f64 {
    1.0
}

impl Default for AfterPurchase {
    fn default() -> Self {
        AfterPurchase {
            pay: 0.0,
            cancel: 0.0,
            leave: 1.0,
        }
    }
}

/// What a buyer did with an accepted order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuyerAction {
    Pay,
    Cancel,
    Leave,
}

impl AfterPurchase {
    /// Picks an action from a uniform draw `roll` in `[0, 1)`.
    pub fn pick(&self, roll: f64) -> BuyerAction {
        let total = self.pay + self.cancel + self.leave;
        if total <= 0.0 {
            return BuyerAction::Leave;
        }
        let point = roll * total;
        if point < self.pay {
            BuyerAction::Pay
        } else if point < self.pay + self.cancel {
            BuyerAction::Cancel
        } else {
            BuyerAction::Leave
        }
    }
}

/// Outcomes the scenario promises beyond the universal invariants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Every unit ends up paid (remaining == reserved == 0): stock given back by cancels
    /// and expiries was sold again.
    #[serde(default)]
    pub all_paid: bool,
    /// Every unit is taken (remaining == 0) at the end.
    #[serde(default)]
    pub sold_out: bool,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn invalid(&self, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// Checks what serde cannot: ranges of api.md and the runner's own limits.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if !is_identifier(&self.name) || self.name.len() > 24 {
            return Err(self.invalid("name must be 1..=24 chars of [A-Za-z0-9_.:-]"));
        }
        let plan = &self.promotion;
        if !(10..=86_400).contains(&plan.payment_timeout_s) {
            return Err(self.invalid("promotion.payment_timeout_s must be 10..=86400"));
        }
        if !(1..=100).contains(&plan.token_multiplier) {
            return Err(self.invalid("promotion.token_multiplier must be 1..=100"));
        }
        if plan.duration_s == 0 {
            return Err(self.invalid("promotion.duration_s must be > 0"));
        }
        let items = self.items();
        if items.is_empty() || items.len() > 1000 {
            return Err(self.invalid("the promotion needs 1..=1000 items in total"));
        }
        let mut seen = std::collections::HashSet::new();
        for item in &items {
            // The runner appends a run tag to each sku: leave room for it.
            if !is_identifier(&item.sku) || item.sku.len() > 48 {
                return Err(self.invalid(format!(
                    "sku {:?} must be 1..=48 chars of [A-Za-z0-9_.:-]",
                    item.sku
                )));
            }
            if !seen.insert(item.sku.clone()) {
                return Err(self.invalid(format!("sku {} appears twice", item.sku)));
            }
            if item.stock > 1_000_000_000 || item.price_cents < 0 || item.per_user_limit == 0 {
                return Err(self.invalid(format!("item {}: stock, price or limit", item.sku)));
            }
            if !(item.weight >= 0.0 && item.weight.is_finite()) {
                return Err(self.invalid(format!("item {}: weight must be >= 0", item.sku)));
            }
        }
        if items.iter().all(|item| item.weight == 0.0) {
            return Err(self.invalid("at least one item needs a weight > 0"));
        }
        if self.waves.is_empty() {
            return Err(self.invalid("at least one [[wave]] is needed"));
        }
        for wave in &self.waves {
            self.validate_wave(wave)?;
        }
        Ok(())
    }

    fn validate_wave(&self, wave: &Wave) -> Result<(), ScenarioError> {
        let name = &wave.name;
        if wave.shoppers == 0 || wave.concurrency == 0 || wave.attempts == 0 {
            return Err(self.invalid(format!(
                "wave {name}: shoppers, concurrency, attempts must be > 0"
            )));
        }
        if wave.concurrency > 10_000 {
            return Err(self.invalid(format!("wave {name}: concurrency above 10000")));
        }
        if wave.quantity == 0 {
            return Err(self.invalid(format!("wave {name}: quantity must be > 0")));
        }
        if let Some(rate) = wave.rate_per_s {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(self.invalid(format!("wave {name}: rate_per_s must be > 0")));
            }
        }
        if let Some(kill_at) = wave.kill_at {
            if !(0.0..1.0).contains(&kill_at) {
                return Err(self.invalid(format!("wave {name}: kill_at must be in [0, 1)")));
            }
        }
        let weights = &wave.after_purchase;
        if [weights.pay, weights.cancel, weights.leave]
            .iter()
            .any(|weight| !(*weight >= 0.0 && weight.is_finite()))
        {
            return Err(self.invalid(format!("wave {name}: after_purchase weights must be >= 0")));
        }
        Ok(())
    }

    /// The concrete items, groups expanded.
    pub fn items(&self) -> Vec<ItemPlan> {
        let mut items = Vec::new();
        for group in &self.promotion.item_groups {
            for index in 0..group.count {
                let sku = if group.count == 1 {
                    group.sku.clone()
                } else {
                    format!("{}-{:04}", group.sku, index + 1)
                };
                items.push(ItemPlan {
                    sku,
                    stock: group.stock,
                    price_cents: group.price_cents,
                    per_user_limit: group.per_user_limit,
                    weight: group.weight,
                });
            }
        }
        items
    }

    /// Shrinks (or grows) shopper counts and open-loop rates by `scale`, keeping at least one
    /// shopper per wave; stock is unchanged so invariants keep their meaning.
    pub fn scaled(&self, scale: f64) -> Scenario {
        let mut scenario = self.clone();
        for wave in &mut scenario.waves {
            wave.shoppers = ((wave.shoppers as f64 * scale).round() as u64).max(1);
            wave.first_user = (wave.first_user as f64 * scale).round() as u64;
            wave.concurrency = wave
                .concurrency
                .min(wave.shoppers.min(10_000) as u32)
                .max(1);
            if let Some(rate) = wave.rate_per_s {
                wave.rate_per_s = Some((rate * scale).max(1.0));
            }
        }
        scenario
    }

    /// True when a wave needs the runner to own the server process.
    pub fn needs_spawn(&self) -> bool {
        self.waves.iter().any(|wave| wave.kill_at.is_some())
    }
}

/// api.md identifiers: `[A-Za-z0-9_.:-]{1,64}`.
pub fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "tiny"
        seed = 9
        [promotion]
        payment_timeout_s = 10
        [[promotion.items]]
        sku = "phone"
        stock = 3
        [[wave]]
        name = "storm"
        shoppers = 100
        concurrency = 8
        after_purchase = { pay = 1.0, leave = 0.0 }
    "#;

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let scenario = Scenario::parse(MINIMAL, "test").expect("valid");
        assert_eq!(scenario.seed, 9);
        assert_eq!(scenario.auth, AuthMode::Header);
        assert!(scenario.promotion.require_token);
        assert_eq!(scenario.promotion.token_multiplier, 5);
        let items = scenario.items();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].per_user_limit, 1);
        assert_eq!(scenario.waves[0].attempts, 1);
        assert_eq!(
            scenario.waves[0].after_purchase.pick(0.99),
            BuyerAction::Pay
        );
    }

    #[test]
    fn groups_expand_to_numbered_skus() {
        let text = MINIMAL.replace("stock = 3", "stock = 3\ncount = 1000");
        let scenario = Scenario::parse(&text, "test").expect("valid");
        let items = scenario.items();
        assert_eq!(items.len(), 1000);
        assert_eq!(items[0].sku, "phone-0001");
        assert_eq!(items[999].sku, "phone-1000");
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        let typo = MINIMAL.replace("concurrency = 8", "concurency = 8");
        assert!(matches!(
            Scenario::parse(&typo, "test"),
            Err(ScenarioError::Parse { .. })
        ));
        let short_timeout = MINIMAL.replace("payment_timeout_s = 10", "payment_timeout_s = 5");
        assert!(matches!(
            Scenario::parse(&short_timeout, "test"),
            Err(ScenarioError::Invalid { .. })
        ));
        let too_many = MINIMAL.replace("stock = 3", "stock = 3\ncount = 1001");
        assert!(Scenario::parse(&too_many, "test").is_err());
        let bad_sku = MINIMAL.replace("\"phone\"", "\"phone x\"");
        assert!(Scenario::parse(&bad_sku, "test").is_err());
    }

    #[test]
    fn scaling_shrinks_shoppers_but_not_stock() {
        let scenario = Scenario::parse(MINIMAL, "test").expect("valid");
        let small = scenario.scaled(0.01);
        assert_eq!(small.waves[0].shoppers, 1);
        assert_eq!(small.waves[0].concurrency, 1);
        assert_eq!(small.items()[0].stock, 3);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                Scenario::load(&path).unwrap_or_else(|error| panic!("{error}"));
                count += 1;
            }
        }
        assert!(
            count >= 5,
            "expected the five named scenarios, found {count}"
        );
    }
}
