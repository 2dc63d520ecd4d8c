//! Per-shopper, per-route rate limits (governor's GCRA, one keyed limiter per route).
//!
//! A refused request never reaches a shard: the check is a hash-map lookup and an atomic
//! compare-and-swap. Memory stays bounded because idle shoppers' entries are dropped every
//! [`LIMITER_SWEEP_S`] seconds by [`RateLimits::sweep`].

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{RateLimitConfig, RouteLimit};
use crate::error::AppError;

/// How often idle entries are swept out of the limiters.
pub const LIMITER_SWEEP_S: u64 = 30;

/// The routes with a per-shopper limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedRoute {
    Token,
    Purchase,
    Orders,
}

/// One limiter per limited route; `None` where the limit is turned off (`per_s = 0`).
pub struct RateLimits {
    token: Option<DefaultKeyedRateLimiter<String>>,
    purchase: Option<DefaultKeyedRateLimiter<String>>,
    orders: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("token", &self.token.is_some())
            .field("purchase", &self.purchase.is_some())
            .field("orders", &self.orders.is_some())
            .finish()
    }
}

fn limiter(limit: RouteLimit) -> Option<DefaultKeyedRateLimiter<String>> {
    let per_s = NonZeroU32::new(limit.per_s)?;
    // A burst below the rate would refuse traffic the rate allows.
    let burst = NonZeroU32::new(limit.burst.max(limit.per_s)).unwrap_or(per_s);
    Some(RateLimiter::keyed(
        Quota::per_second(per_s).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimits {
            token: limiter(config.token),
            purchase: limiter(config.purchase),
            orders: limiter(config.orders),
        }
    }

    /// Ok when `user_id` may make one more request on `route` now; else 429 with the wait.
    pub fn check(&self, route: LimitedRoute, user_id: &String) -> Result<(), AppError> {
        let limiter = match route {
            LimitedRoute::Token => &self.token,
            LimitedRoute::Purchase => &self.purchase,
            LimitedRoute::Orders => &self.orders,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(user_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Retry-After is whole seconds; rounding down would invite a retry that fails.
            let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            AppError::RateLimited {
                retry_after_s: retry_after_s.max(1),
            }
        })
    }

    /// Drops the entries of shoppers who have been idle long enough to be back at full burst.
    pub fn sweep(&self) {
        for limiter in [&self.token, &self.purchase, &self.orders]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shopper_past_the_burst_is_refused_and_others_are_not() {
        let limits = RateLimits::new(&RateLimitConfig {
            token: RouteLimit { per_s: 1, burst: 2 },
            purchase: RouteLimit { per_s: 0, burst: 0 },
            orders: RouteLimit { per_s: 1, burst: 1 },
        });
        let alice = "alice".to_owned();
        let bob = "bob".to_owned();
        assert!(limits.check(LimitedRoute::Token, &alice).is_ok());
        assert!(limits.check(LimitedRoute::Token, &alice).is_ok());
        match limits.check(LimitedRoute::Token, &alice) {
            Err(AppError::RateLimited { retry_after_s }) => assert!(retry_after_s >= 1),
            other => panic!("expected rate_limited, got {other:?}"),
        }
        assert!(limits.check(LimitedRoute::Token, &bob).is_ok());
        assert!(limits.check(LimitedRoute::Orders, &alice).is_ok());
        for _ in 0..100 {
            assert!(limits.check(LimitedRoute::Purchase, &alice).is_ok());
        }
    }
}
