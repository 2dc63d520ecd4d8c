//! The human check: work a bot farm must pay, or a captcha it must pass, before a token.
//!
//! A promotion's `human_check` (api.md, "v2: keeping bots out") is `none`, `pow` or
//! `captcha`. It is checked on the token route before a shard is asked: a refused answer
//! never costs a shard a message. The purchase route needs no check of its own, because it
//! needs the token.
//!
//! - `pow`: [`pow::PowIssuer`] hands out stateless challenges (`POST .../challenge`) bound
//!   by a MAC to the shopper, the promotion and the item, and verifies a solution once. Any
//!   node with the same secret verifies any node's challenge; only the "good once" record is
//!   per node (in memory, bounded).
//! - `captcha`: [`captcha::CaptchaVerifier`] asks the captcha provider's siteverify URL about
//!   the widget's response; an unreachable provider fails closed (503 `unavailable`).
//!
//! Neither module knows HTTP: their refusals are typed values, which the token route turns
//! into 403 `human_check_failed` (a missing, wrong, expired or reused answer) or 503
//! `unavailable` (the answer cannot be checked or remembered now).

pub mod captcha;
pub mod pow;
