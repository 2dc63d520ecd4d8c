//! Checks a promotion spec against the rules of api.md and turns it into a record.

use rustc_hash::FxHashSet;

use crate::error::{Error, Result};
use crate::guard::validate_guard;
use crate::ids::is_valid_id;
use crate::model::{ItemRecord, PromotionRecord, PromotionSpec};

/// Items in one promotion, at most.
pub const ITEMS_MAX: usize = 1_000;
/// Stock of one item, at most.
pub const STOCK_MAX: u64 = 1_000_000_000;
/// `payment_timeout_s` range.
pub const PAYMENT_TIMEOUT_S_MIN: u32 = 10;
pub const PAYMENT_TIMEOUT_S_MAX: u32 = 86_400;
/// `token_multiplier` range.
pub const TOKEN_MULTIPLIER_MIN: u32 = 1;
pub const TOKEN_MULTIPLIER_MAX: u32 = 100;
/// Longest promotion name and item title, in bytes.
pub const TEXT_LENGTH_MAX: usize = 256;

/// Validates `spec`; `id` is the id to use (the spec's, or one the engine made).
pub fn validate_promotion(
    spec: &PromotionSpec,
    id: String,
    created_at_ms: i64,
) -> Result<PromotionRecord> {
    if !is_valid_id(&id) {
        return Err(Error::invalid("id", "must match [A-Za-z0-9_.:-]{1,64}"));
    }
    if spec.name.trim().is_empty() || spec.name.len() > TEXT_LENGTH_MAX {
        return Err(Error::invalid("name", "must be 1 to 256 bytes"));
    }
    if spec.ends_at_ms <= spec.starts_at_ms {
        return Err(Error::invalid("ends_at", "must be after starts_at"));
    }
    if !(PAYMENT_TIMEOUT_S_MIN..=PAYMENT_TIMEOUT_S_MAX).contains(&spec.payment_timeout_s) {
        return Err(Error::invalid("payment_timeout_s", "must be 10..=86400"));
    }
    if !(TOKEN_MULTIPLIER_MIN..=TOKEN_MULTIPLIER_MAX).contains(&spec.token_multiplier) {
        return Err(Error::invalid("token_multiplier", "must be 1..=100"));
    }
    if spec.items.is_empty() || spec.items.len() > ITEMS_MAX {
        return Err(Error::invalid("items", "must hold 1 to 1000 items"));
    }
    let mut skus = FxHashSet::default();
    let mut items = Vec::with_capacity(spec.items.len());
    for item in &spec.items {
        if !is_valid_id(&item.sku) {
            return Err(Error::invalid(
                "items.sku",
                "must match [A-Za-z0-9_.:-]{1,64}",
            ));
        }
        if !skus.insert(item.sku.as_str()) {
            return Err(Error::invalid(
                "items.sku",
                format!("{} appears twice in the promotion", item.sku),
            ));
        }
        if item.stock > STOCK_MAX {
            return Err(Error::invalid("items.stock", "must be 0..=1000000000"));
        }
        if item.price_cents < 0 {
            return Err(Error::invalid("items.price_cents", "must be >= 0"));
        }
        if item.per_user_limit < 1 {
            return Err(Error::invalid("items.per_user_limit", "must be >= 1"));
        }
        let title = match &item.title {
            Some(title) if title.trim().is_empty() || title.len() > TEXT_LENGTH_MAX => {
                return Err(Error::invalid("items.title", "must be 1 to 256 bytes"));
            }
            Some(title) => title.clone(),
            None => item.sku.clone(),
        };
        items.push(ItemRecord {
            sku: item.sku.clone(),
            title,
            stock: item.stock,
            price_cents: item.price_cents,
            per_user_limit: item.per_user_limit,
        });
    }
    validate_guard(&spec.guard, spec.require_token)?;
    Ok(PromotionRecord {
        id,
        name: spec.name.clone(),
        starts_at_ms: spec.starts_at_ms,
        ends_at_ms: spec.ends_at_ms,
        payment_timeout_s: spec.payment_timeout_s,
        require_token: spec.require_token,
        token_multiplier: spec.token_multiplier,
        created_at_ms,
        items,
        guard: spec.guard.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ItemSpec;

    fn spec() -> PromotionSpec {
        PromotionSpec {
            id: Some("p1".into()),
            name: "Sale".into(),
            starts_at_ms: 1_000,
            ends_at_ms: 2_000,
            payment_timeout_s: 900,
            require_token: true,
            token_multiplier: 5,
            items: vec![ItemSpec {
                sku: "sku-1".into(),
                title: None,
                stock: 10,
                price_cents: 100,
                per_user_limit: 1,
            }],
            guard: Default::default(),
        }
    }

    fn field_of(result: Result<PromotionRecord>) -> String {
        match result {
            Err(Error::InvalidRequest { field, .. }) => field,
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_spec_becomes_a_record_with_defaults_filled() {
        let record = validate_promotion(&spec(), "p1".into(), 5).expect("valid");
        assert_eq!(record.items[0].title, "sku-1");
        assert_eq!(record.created_at_ms, 5);
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut s = spec();
        s.ends_at_ms = s.starts_at_ms;
        assert_eq!(field_of(validate_promotion(&s, "p1".into(), 0)), "ends_at");

        let mut s = spec();
        s.items[0].stock = STOCK_MAX + 1;
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "items.stock"
        );

        let mut s = spec();
        s.items[0].price_cents = -1;
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "items.price_cents"
        );

        let mut s = spec();
        s.items[0].per_user_limit = 0;
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "items.per_user_limit"
        );

        let mut s = spec();
        s.items.push(s.items[0].clone());
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "items.sku"
        );

        let mut s = spec();
        s.items.clear();
        assert_eq!(field_of(validate_promotion(&s, "p1".into(), 0)), "items");

        let mut s = spec();
        s.payment_timeout_s = 9;
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "payment_timeout_s"
        );

        let mut s = spec();
        s.token_multiplier = 101;
        assert_eq!(
            field_of(validate_promotion(&s, "p1".into(), 0)),
            "token_multiplier"
        );

        assert_eq!(
            field_of(validate_promotion(&spec(), "bad id".into(), 0)),
            "id"
        );
    }
}
