//! Per-shopper, per-route rate limits and the per-address limit (governor's GCRA, one keyed
//! limiter per route, and one keyed by client address).
//!
//! A refused request never reaches a shard: the check is a hash-map lookup and an atomic
//! compare-and-swap.
//!
//! The per-address limit (`[rate_limit.ip]`, off by default) is one limiter shared by the
//! token and purchase routes rather than one per route: a bot behind one address spends one
//! budget whichever route it hammers, and one table of addresses costs half the memory of
//! two. An honest shopper spends two requests a purchase (a token, then the purchase), which
//! `per_s` and `burst` must allow for every shopper behind one address (an office, a mobile
//! carrier's NAT). An IPv6 client is counted by its /64: one host, or one home router,
//! usually owns a whole /64 and can pick any address in it, so counting single IPv6
//! addresses would give such a client 2^64 budgets.
//!
//! Memory is bounded (api.md, "Bounded memory"): each route's limiter holds at most
//! [`LIMITER_KEYS_MAX`] shoppers. An entry is dropped as soon as its shopper is back at full
//! burst, by [`RateLimits::sweep`] every [`LIMITER_SWEEP_S`] seconds and, while a limiter is
//! full, by a sweep at most every [`LIMITER_FULL_SWEEP_MS`] on the request path. When it is
//! still full, a shopper it does not hold is not added and is judged as a shopper seen for
//! the first time: the request passes (a fresh shopper always has its burst) and nothing is
//! kept. A per-shopper limit is about one shopper hammering a route, which the held shoppers
//! still cannot do; refusing everyone else instead would turn a million honest shoppers in
//! one second into 429s. A storm of distinct ids costs no memory either way, and meets the
//! shard's own gate (sold out, ended) or the per-address limit. The cap is only met when more
//! than [`LIMITER_KEYS_MAX`] shoppers were active on one route within about one burst's time.
//! The address limiter is bounded and swept the same way, by [`LIMITER_KEYS_MAX`] addresses
//! (IPv6 /64s); past the cap a new address passes as one seen for the first time.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::config::{RateLimitConfig, RouteLimit};
use crate::error::AppError;

/// How often idle entries are swept out of the limiters.
pub const LIMITER_SWEEP_S: u64 = 30;
/// Most shoppers one route's limiter holds (about 100 bytes each).
pub const LIMITER_KEYS_MAX: usize = 100_000;
/// While a limiter is full, it is swept at most this often, on the request path.
pub const LIMITER_FULL_SWEEP_MS: u64 = 1_000;

/// The routes with a per-shopper limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedRoute {
    Token,
    Purchase,
    Orders,
}

/// One limiter per limited route, and the per-address one; `None` where a limit is turned
/// off (`per_s = 0`).
pub struct RateLimits {
    token: Option<RouteLimiter<String>>,
    purchase: Option<RouteLimiter<String>>,
    orders: Option<RouteLimiter<String>>,
    /// Per client address, shared by the token and purchase routes (see the module docs).
    address: Option<RouteLimiter<AddressKey>>,
    /// The zero of [`RouteLimiter::next_full_sweep_ms`].
    started: Instant,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("token", &self.token.is_some())
            .field("purchase", &self.purchase.is_some())
            .field("orders", &self.orders.is_some())
            .field("address", &self.address.is_some())
            .finish()
    }
}

/// What the per-address limiter counts: an IPv4 address, or an IPv6 address's /64 (see the
/// module docs). `Copy` and 17 bytes: no allocation per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AddressKey(IpAddr);

impl AddressKey {
    fn of(addr: IpAddr) -> AddressKey {
        match addr.to_canonical() {
            IpAddr::V4(v4) => AddressKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix_64 = u128::from(v6) & (u128::MAX << 64);
                AddressKey(IpAddr::V6(Ipv6Addr::from(prefix_64)))
            }
        }
    }
}

/// A keyed state store that holds at most `keys_max` keys (shoppers, or addresses); see
/// the module docs.
struct BoundedStore<K: Hash + Eq + Clone> {
    keys: DashMapStateStore<K>,
    keys_max: usize,
    /// Shoppers admitted since the last sweep counted them: never less than `keys.len()`
    /// (a count is taken before the entry is made), so `keys` never outgrows `keys_max`
    /// by more than the requests racing a sweep's recount.
    admitted: Arc<AtomicUsize>,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // The read guard is released before a new entry is made (which locks its shard).
        if let Some(state) = self.keys.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if admit(&self.admitted, self.keys_max) {
            self.keys.measure_and_replace(key, f)
        } else {
            // Judged as a first request, and not kept (see the module docs).
            f(None).map(|(answer, _)| answer)
        }
    }
}

/// Takes one of the `keys_max` places counted by `admitted`; false when all are taken.
fn admit(admitted: &AtomicUsize, keys_max: usize) -> bool {
    let take_one = |n: usize| (n < keys_max).then_some(n + 1);
    admitted
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, take_one)
        .is_ok()
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.keys, drop_below);
        self.admitted.store(self.keys.len(), Ordering::Release);
    }

    fn shrink_to_fit(&self) {
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One route's limiter (or the address limiter), and what it takes to sweep it when full.
struct RouteLimiter<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, BoundedStore<K>, DefaultClock>,
    keys_max: usize,
    /// The store's count of admitted shoppers, read to see whether it is full.
    admitted: Arc<AtomicUsize>,
    /// When a full limiter may be swept next, in ms since [`RateLimits::started`].
    next_full_sweep_ms: AtomicU64,
}

impl<K: Hash + Eq + Clone> RouteLimiter<K> {
    fn new(limit: RouteLimit, keys_max: usize) -> Option<RouteLimiter<K>> {
        let per_s = NonZeroU32::new(limit.per_s)?;
        // A burst below the rate would refuse traffic the rate allows.
        let burst = NonZeroU32::new(limit.burst.max(limit.per_s)).unwrap_or(per_s);
        let admitted = Arc::new(AtomicUsize::new(0));
        let store = BoundedStore {
            keys: DashMapStateStore::default(),
            keys_max,
            admitted: Arc::clone(&admitted),
        };
        let quota = Quota::per_second(per_s).allow_burst(burst);
        Some(RouteLimiter {
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            keys_max,
            admitted,
            next_full_sweep_ms: AtomicU64::new(0),
        })
    }

    /// Drops the entries of shoppers back at full burst; `shrink` also gives back memory.
    fn sweep(&self, shrink: bool) {
        self.limiter.retain_recent();
        if shrink {
            self.limiter.shrink_to_fit();
        }
    }

    /// A full limiter is swept now unless it was less than [`LIMITER_FULL_SWEEP_MS`] ago;
    /// of racing requests only one sweeps.
    fn sweep_if_full(&self, now_ms: u64) {
        if self.admitted.load(Ordering::Acquire) < self.keys_max {
            return;
        }
        let next = &self.next_full_sweep_ms;
        let next_ms = next.load(Ordering::Acquire);
        if now_ms < next_ms {
            return;
        }
        let until_ms = now_ms.saturating_add(LIMITER_FULL_SWEEP_MS);
        let claimed = next.compare_exchange(next_ms, until_ms, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_ok() {
            self.sweep(false);
        }
    }

    /// Ok when `key` may make one more request now; else 429 with the wait. `now_ms` is
    /// the time since [`RateLimits::started`].
    fn check(&self, key: &K, now_ms: u64) -> Result<(), AppError> {
        self.sweep_if_full(now_ms);
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Retry-After is whole seconds; rounding down would invite a retry that fails.
            let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            AppError::RateLimited {
                retry_after_s: retry_after_s.max(1),
            }
        })
    }
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        RateLimits::with_keys_max(config, LIMITER_KEYS_MAX)
    }

    /// [`RateLimits::new`] holding at most `keys_max` shoppers per route, and at most
    /// `keys_max` addresses.
    pub fn with_keys_max(config: &RateLimitConfig, keys_max: usize) -> Self {
        RateLimits {
            token: RouteLimiter::new(config.token, keys_max),
            purchase: RouteLimiter::new(config.purchase, keys_max),
            orders: RouteLimiter::new(config.orders, keys_max),
            address: RouteLimiter::new(config.ip, keys_max),
            started: Instant::now(),
        }
    }

    fn route(&self, route: LimitedRoute) -> Option<&RouteLimiter<String>> {
        match route {
            LimitedRoute::Token => self.token.as_ref(),
            LimitedRoute::Purchase => self.purchase.as_ref(),
            LimitedRoute::Orders => self.orders.as_ref(),
        }
    }

    /// Milliseconds since [`RateLimits::started`].
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Ok when `user_id` may make one more request on `route` now; else 429 with the wait.
    pub fn check(&self, route: LimitedRoute, user_id: &String) -> Result<(), AppError> {
        match self.route(route) {
            Some(limiter) => limiter.check(user_id, self.now_ms()),
            None => Ok(()),
        }
    }

    /// Ok when the client at `addr` may make one more request on `route` now; else the same
    /// 429 `rate_limited` with `Retry-After` as [`RateLimits::check`]. The token and
    /// purchase routes share one budget per address (IPv6: per /64); the other routes have
    /// no per-address limit (api.md), and no route has one while `[rate_limit.ip]` is off.
    pub fn check_ip(&self, route: LimitedRoute, addr: IpAddr) -> Result<(), AppError> {
        match route {
            LimitedRoute::Token | LimitedRoute::Purchase => {}
            LimitedRoute::Orders => return Ok(()),
        }
        match &self.address {
            Some(limiter) => limiter.check(&AddressKey::of(addr), self.now_ms()),
            None => Ok(()),
        }
    }

    /// The number of shoppers `route`'s limiter holds now (0 when the limit is off).
    pub fn keys(&self, route: LimitedRoute) -> usize {
        self.route(route).map_or(0, |route| route.limiter.len())
    }

    /// The number of addresses (IPv6: /64s) the per-address limiter holds now (0 when off).
    pub fn address_keys(&self) -> usize {
        self.address
            .as_ref()
            .map_or(0, |limiter| limiter.limiter.len())
    }

    /// Drops the entries of shoppers and addresses idle long enough to be back at full burst.
    pub fn sweep(&self) {
        for route in [&self.token, &self.purchase, &self.orders]
            .into_iter()
            .flatten()
        {
            route.sweep(true);
        }
        if let Some(address) = &self.address {
            address.sweep(true);
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
            ip: RouteLimit { per_s: 0, burst: 0 },
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

    #[test]
    fn a_storm_of_distinct_shoppers_stays_within_the_cap() {
        const KEYS_MAX: usize = 100;
        let config = RateLimitConfig {
            token: RouteLimit { per_s: 1, burst: 3 },
            purchase: RouteLimit { per_s: 1, burst: 3 },
            orders: RouteLimit { per_s: 0, burst: 0 },
            ip: RouteLimit { per_s: 0, burst: 0 },
        };
        let limits = RateLimits::with_keys_max(&config, KEYS_MAX);
        let held: Vec<String> = (0..KEYS_MAX).map(|i| format!("held-{i}")).collect();
        for user in &held {
            assert!(limits.check(LimitedRoute::Token, user).is_ok(), "{user}");
        }
        assert_eq!(limits.keys(LimitedRoute::Token), KEYS_MAX);

        // 100 times the cap of new shoppers: none is added, and each is judged as a first
        // request (allowed), so honest newcomers are not refused for the table being full.
        for i in 0..KEYS_MAX * 100 {
            let user = format!("storm-{i}");
            assert!(limits.check(LimitedRoute::Token, &user).is_ok(), "{user}");
            assert!(limits.keys(LimitedRoute::Token) <= KEYS_MAX, "{i}");
        }

        // A shopper held keeps its own bucket (2 of 3 left), untouched by the storm.
        assert!(limits.check(LimitedRoute::Token, &held[0]).is_ok());
        assert!(limits.check(LimitedRoute::Token, &held[0]).is_ok());
        assert!(limits.check(LimitedRoute::Purchase, &held[0]).is_ok());
        limits.sweep();
        assert!(limits.keys(LimitedRoute::Token) <= KEYS_MAX);
        assert_eq!(limits.keys(LimitedRoute::Orders), 0);
    }

    /// Only the per-address limit on: 1 a second, a burst of `burst`.
    fn address_limits(burst: u32, keys_max: usize) -> RateLimits {
        let off = RouteLimit { per_s: 0, burst: 0 };
        let config = RateLimitConfig {
            token: off,
            purchase: off,
            orders: off,
            ip: RouteLimit { per_s: 1, burst },
        };
        RateLimits::with_keys_max(&config, keys_max)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn is_rate_limited(answer: Result<(), AppError>) -> bool {
        match answer {
            Ok(()) => false,
            Err(AppError::RateLimited { retry_after_s }) => {
                assert!(retry_after_s >= 1);
                true
            }
            Err(other) => panic!("expected rate_limited, got {other:?}"),
        }
    }

    #[test]
    fn an_address_past_its_burst_is_refused_on_token_and_purchase_alike() {
        let limits = address_limits(3, LIMITER_KEYS_MAX);
        let bot = ip("203.0.113.7");
        assert!(limits.check_ip(LimitedRoute::Token, bot).is_ok());
        assert!(limits.check_ip(LimitedRoute::Purchase, bot).is_ok());
        assert!(limits.check_ip(LimitedRoute::Token, bot).is_ok());
        // One budget for both routes: the fourth request is refused on either.
        assert!(is_rate_limited(
            limits.check_ip(LimitedRoute::Purchase, bot)
        ));
        assert!(is_rate_limited(limits.check_ip(LimitedRoute::Token, bot)));
        // Another address has its own budget; the orders routes have no address limit.
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("203.0.113.8"))
            .is_ok());
        for _ in 0..10 {
            assert!(limits.check_ip(LimitedRoute::Orders, bot).is_ok());
        }
        // The per-shopper limits are off here: the address limit does not touch them.
        assert!(limits
            .check(LimitedRoute::Token, &"alice".to_owned())
            .is_ok());
        assert_eq!(limits.address_keys(), 2);
    }

    #[test]
    fn the_address_limit_is_off_by_default() {
        let limits = RateLimits::new(&RateLimitConfig::default());
        let bot = ip("203.0.113.7");
        for _ in 0..1_000 {
            assert!(limits.check_ip(LimitedRoute::Token, bot).is_ok());
        }
        assert_eq!(limits.address_keys(), 0);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let limits = address_limits(2, LIMITER_KEYS_MAX);
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("2001:db8:1:2::1"))
            .is_ok());
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("2001:db8:1:2:ffff::9"))
            .is_ok());
        // A third address in the same /64 shares the spent budget.
        let same_64 = ip("2001:db8:1:2:abcd::1");
        assert!(is_rate_limited(
            limits.check_ip(LimitedRoute::Token, same_64)
        ));
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("2001:db8:1:3::1"))
            .is_ok());
        // An IPv4-mapped address is its IPv4 address.
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("192.0.2.1"))
            .is_ok());
        assert!(limits
            .check_ip(LimitedRoute::Token, ip("::ffff:192.0.2.1"))
            .is_ok());
        let mapped = ip("::ffff:192.0.2.1");
        assert!(is_rate_limited(
            limits.check_ip(LimitedRoute::Token, mapped)
        ));
        assert_eq!(limits.address_keys(), 3);
    }

    #[test]
    fn a_storm_of_distinct_addresses_stays_within_the_cap() {
        const KEYS_MAX: usize = 100;
        let limits = address_limits(2, KEYS_MAX);
        let held = ip("198.51.100.1");
        assert!(limits.check_ip(LimitedRoute::Token, held).is_ok());
        for i in 0..u32::try_from(KEYS_MAX * 100).expect("small") {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(
                limits.check_ip(LimitedRoute::Purchase, addr).is_ok(),
                "{addr}"
            );
            assert!(limits.address_keys() <= KEYS_MAX, "{i}");
        }
        // The address held keeps its bucket (1 of 2 left), untouched by the storm.
        assert!(limits.check_ip(LimitedRoute::Token, held).is_ok());
        assert!(is_rate_limited(limits.check_ip(LimitedRoute::Token, held)));
        limits.sweep();
        assert!(limits.address_keys() <= KEYS_MAX);
    }
}
