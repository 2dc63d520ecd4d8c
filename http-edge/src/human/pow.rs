//! Proof-of-work challenges: issue them stateless, verify a solution once.
//!
//! A challenge is the text `v1.<id>.<expires_ms>.<bits>.<mac>`: a random 128-bit `id`
//! (base64url, no padding), its expiry (unix milliseconds), its difficulty, and an
//! HMAC-SHA256 over those and the shopper, promotion and item it was issued for. The three
//! bound names are not written in the text (the verifier knows them from the route and the
//! credential); a challenge presented for another shopper or item fails the MAC. Every
//! character is one of `[A-Za-z0-9_.-]`, so the text needs no escaping in JSON or a URL.
//!
//! A solution is a `nonce` such that SHA-256(challenge text + nonce) starts with `bits` zero
//! bits: about 2^bits hashes for the shopper's browser, two for the server.
//!
//! The key is derived from the configured secret, so any node with the same secret verifies
//! any node's challenges, before and after a restart. "Good once" is a record in memory of
//! the ids accepted and not yet expired: it is per node and does not survive a restart, so
//! a solution may be accepted once per node (and once more after a restart) within its
//! lifetime. That gains its shopper little: the shopper is the one it was issued to, and a
//! repeated token request answers the same unused token.
//!
//! The record is bounded ([`USED_CHALLENGES_MAX`]); when it is full of unexpired ids, a
//! correct solution is refused with [`PowRefusal::Busy`] (503) rather than accepted
//! without being remembered.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Most accepted, unexpired challenge ids one node remembers (about 20 to 40 bytes each:
/// the 16-byte id in a hash set, grouped by expiry second).
pub const USED_CHALLENGES_MAX: usize = 1_000_000;
/// Longest challenge text accepted, checked before any parsing or hashing.
pub const CHALLENGE_BYTES_MAX: usize = 256;
/// Longest nonce accepted, checked before any hashing.
pub const NONCE_BYTES_MAX: usize = 64;

/// What the challenge key is derived with, so that this secret's other uses (if the
/// operator reuses it) never yield the same key.
const KEY_DERIVATION_LABEL: &[u8] = b"seckill pow challenge v1";
const CHALLENGE_VERSION: &str = "v1";
const CHALLENGE_ID_BYTES: usize = 16;
/// Width of a used-set bucket: ids are grouped by the second they expire in, so expired
/// ids leave a whole bucket at a time.
const USED_BUCKET_MS: i64 = 1_000;

type HmacSha256 = Hmac<Sha256>;

/// One challenge, as the challenge route answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowChallenge {
    /// The text the shopper hashes with a nonce, and sends back as is.
    pub challenge: String,
    pub difficulty_bits: u8,
    /// After this instant (unix milliseconds) the challenge is refused.
    pub expires_at_ms: i64,
}

/// Why a solution was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PowRefusal {
    /// Too long, not of the `v1.<id>.<expires_ms>.<bits>.<mac>` shape, or a nonce too long.
    #[error("the challenge or nonce is malformed")]
    Malformed,
    /// The MAC does not match: not issued by a node with this secret, altered, or issued
    /// for another shopper, promotion or item.
    #[error("the challenge was not issued for this shopper and item")]
    Forged,
    #[error("the challenge has expired")]
    Expired,
    /// Issued under a lower difficulty than the one in force now.
    #[error("the challenge is easier than the difficulty in force")]
    TooEasy,
    /// The digest of challenge + nonce has too few leading zero bits.
    #[error("the nonce does not solve the challenge")]
    Unsolved,
    /// The challenge was already accepted once.
    #[error("the challenge was already used")]
    Replayed,
    /// The record of used challenges is full: the solution cannot be remembered, so it is
    /// not accepted (answer 503; the shopper may retry).
    #[error("too many challenges in use; retry shortly")]
    Busy,
}

impl PowRefusal {
    /// True when the refusal is the server's (503), not the shopper's (403).
    pub fn is_busy(&self) -> bool {
        matches!(self, PowRefusal::Busy)
    }
}

/// Issues and verifies challenges. Shared by every request (`&self`); only the final
/// "good once" record takes a lock.
pub struct PowIssuer {
    /// HMAC state keyed with the derived key, cloned for each MAC (saves re-keying).
    mac_keyed: HmacSha256,
    difficulty_bits: u8,
    lifetime_ms: i64,
    used: Mutex<UsedChallenges>,
}

impl std::fmt::Debug for PowIssuer {
    // By hand: the key must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowIssuer")
            .field("difficulty_bits", &self.difficulty_bits)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl PowIssuer {
    /// An issuer whose challenges ask for `difficulty_bits` zero bits and live `lifetime_ms`.
    ///
    /// # Panics
    ///
    /// When `lifetime_ms <= 0`: the configuration refuses such a value before this.
    pub fn new(secret: &[u8], difficulty_bits: u8, lifetime_ms: i64) -> Self {
        Self::with_used_max(secret, difficulty_bits, lifetime_ms, USED_CHALLENGES_MAX)
    }

    fn with_used_max(
        secret: &[u8],
        difficulty_bits: u8,
        lifetime_ms: i64,
        used_max: usize,
    ) -> Self {
        assert!(lifetime_ms > 0, "a challenge lifetime must be positive");
        assert!(
            used_max > 0,
            "the used-challenge record must hold at least one id"
        );
        let key = hmac_keyed(secret)
            .chain_update(KEY_DERIVATION_LABEL)
            .finalize()
            .into_bytes();
        Self {
            mac_keyed: hmac_keyed(&key),
            difficulty_bits,
            lifetime_ms,
            used: Mutex::new(UsedChallenges::new(used_max)),
        }
    }

    /// The difficulty a challenge issued now carries.
    pub fn difficulty_bits(&self) -> u8 {
        self.difficulty_bits
    }

    /// How long a challenge issued now stays good.
    pub fn lifetime_ms(&self) -> i64 {
        self.lifetime_ms
    }

    /// A fresh challenge for this shopper and item, expiring `lifetime_ms` after `now_ms`.
    pub fn issue(&self, user_id: &str, promotion_id: &str, sku: &str, now_ms: i64) -> PowChallenge {
        let id: [u8; CHALLENGE_ID_BYTES] = rand::random();
        let expires_at_ms = now_ms.saturating_add(self.lifetime_ms);
        let signed_text = format!(
            "{CHALLENGE_VERSION}.{}.{expires_at_ms}.{}",
            URL_SAFE_NO_PAD.encode(id),
            self.difficulty_bits
        );
        let mac = self
            .mac(&signed_text, user_id, promotion_id, sku)
            .finalize()
            .into_bytes();
        PowChallenge {
            challenge: format!("{signed_text}.{}", URL_SAFE_NO_PAD.encode(mac)),
            difficulty_bits: self.difficulty_bits,
            expires_at_ms,
        }
    }

    /// Accepts `nonce` as this shopper's solution of `challenge` for this item, once.
    ///
    /// The checks run cheapest and least trusting first; the used record is locked only
    /// when everything else passed, so a storm of wrong answers never takes the lock, and
    /// a wrong nonce does not use up the challenge.
    pub fn verify(
        &self,
        user_id: &str,
        promotion_id: &str,
        sku: &str,
        challenge: &str,
        nonce: &str,
        now_ms: i64,
    ) -> Result<(), PowRefusal> {
        if challenge.len() > CHALLENGE_BYTES_MAX || nonce.len() > NONCE_BYTES_MAX {
            return Err(PowRefusal::Malformed);
        }
        let parsed = ParsedChallenge::parse(challenge)?;
        self.mac(parsed.signed_text, user_id, promotion_id, sku)
            .verify_slice(&parsed.mac)
            .map_err(|_| PowRefusal::Forged)?;
        if now_ms >= parsed.expires_at_ms {
            return Err(PowRefusal::Expired);
        }
        if parsed.difficulty_bits < self.difficulty_bits {
            return Err(PowRefusal::TooEasy);
        }
        if leading_zero_bits(&pow_digest(challenge, nonce)) < u32::from(parsed.difficulty_bits) {
            return Err(PowRefusal::Unsolved);
        }
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(parsed.id, parsed.expires_at_ms, now_ms)
    }

    /// How many accepted challenges this node remembers now (for metrics and tests).
    pub fn used_challenges(&self) -> usize {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).len
    }

    /// The MAC state over the signed text and the three bound names, each length-prefixed
    /// so that no two different tuples feed the same bytes.
    fn mac(&self, signed_text: &str, user_id: &str, promotion_id: &str, sku: &str) -> HmacSha256 {
        let mut mac = self.mac_keyed.clone();
        for field in [signed_text, user_id, promotion_id, sku] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }
}

fn hmac_keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length (a long one is hashed first): this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// A challenge text split into its parts; the MAC is not checked yet.
struct ParsedChallenge<'a> {
    /// `v1.<id>.<expires_ms>.<bits>`: what the MAC covers, as sent.
    signed_text: &'a str,
    id: [u8; CHALLENGE_ID_BYTES],
    expires_at_ms: i64,
    difficulty_bits: u8,
    mac: Vec<u8>,
}

impl<'a> ParsedChallenge<'a> {
    fn parse(challenge: &'a str) -> Result<Self, PowRefusal> {
        let (signed_text, mac_text) = challenge.rsplit_once('.').ok_or(PowRefusal::Malformed)?;
        let mut parts = signed_text.split('.');
        let (Some(version), Some(id_text), Some(expires_text), Some(bits_text), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PowRefusal::Malformed);
        };
        if version != CHALLENGE_VERSION {
            return Err(PowRefusal::Malformed);
        }
        let id_bytes = URL_SAFE_NO_PAD
            .decode(id_text)
            .map_err(|_| PowRefusal::Malformed)?;
        let id = <[u8; CHALLENGE_ID_BYTES]>::try_from(id_bytes.as_slice())
            .map_err(|_| PowRefusal::Malformed)?;
        let expires_at_ms = expires_text
            .parse::<i64>()
            .map_err(|_| PowRefusal::Malformed)?;
        let difficulty_bits = bits_text.parse::<u8>().map_err(|_| PowRefusal::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac_text)
            .map_err(|_| PowRefusal::Malformed)?;
        Ok(Self {
            signed_text,
            id,
            expires_at_ms,
            difficulty_bits,
            mac,
        })
    }
}

/// SHA-256 of the challenge text followed by the nonce, as the shopper's page computes it.
fn pow_digest(challenge: &str, nonce: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = Sha256::new();
    hasher.update(challenge.as_bytes());
    hasher.update(nonce.as_bytes());
    hasher.finalize().into()
}

/// How many zero bits `digest` starts with.
pub fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut count = 0;
    for byte in digest {
        if *byte != 0 {
            return count + byte.leading_zeros();
        }
        count += 8;
    }
    count
}

/// Finds a nonce (a decimal counter) solving `challenge` at `difficulty_bits`, by brute
/// force, as a shopper's page would. For tests and load scenarios only: it takes about
/// 2^difficulty_bits hashes, and has no bound beyond the counter's.
pub fn solve(challenge: &str, difficulty_bits: u8) -> String {
    use sha2::Digest as _;
    let prefix = Sha256::new_with_prefix(challenge.as_bytes());
    let mut digits = [0u8; 20];
    for counter in 0..=u64::MAX {
        let nonce = decimal(counter, &mut digits);
        let digest = prefix.clone().chain_update(nonce).finalize();
        if leading_zero_bits(&digest) >= u32::from(difficulty_bits) {
            return String::from_utf8_lossy(nonce).into_owned();
        }
    }
    unreachable!("2^64 nonces contain a solution for any difficulty up to 64 bits")
}

/// `value` in decimal, written at the end of `digits` (20 digits hold any u64).
fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

/// The ids of accepted challenges until they expire, grouped by expiry second so that the
/// expired ones are dropped a bucket at a time (no scan of live entries under the lock).
#[derive(Debug)]
struct UsedChallenges {
    /// Expiry second (`expires_at_ms / USED_BUCKET_MS`) to the ids expiring in it.
    buckets: BTreeMap<i64, HashSet<[u8; CHALLENGE_ID_BYTES]>>,
    /// Ids in all buckets.
    len: usize,
    len_max: usize,
    /// Every bucket before this one was dropped: an id expiring in it can no longer be told
    /// apart from a new one, so it is refused as expired (a caller whose clock reads a
    /// little behind the sweeper's must not slip a replay through).
    dropped_before_bucket: i64,
}

impl UsedChallenges {
    fn new(len_max: usize) -> Self {
        Self {
            buckets: BTreeMap::new(),
            len: 0,
            len_max,
            dropped_before_bucket: i64::MIN,
        }
    }

    /// Records `id` as used, or says why it cannot be.
    fn record(
        &mut self,
        id: [u8; CHALLENGE_ID_BYTES],
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), PowRefusal> {
        self.drop_expired(now_ms);
        let bucket = expires_at_ms.div_euclid(USED_BUCKET_MS);
        if bucket < self.dropped_before_bucket {
            return Err(PowRefusal::Expired);
        }
        if self
            .buckets
            .get(&bucket)
            .is_some_and(|ids| ids.contains(&id))
        {
            return Err(PowRefusal::Replayed);
        }
        if self.len >= self.len_max {
            return Err(PowRefusal::Busy);
        }
        self.buckets.entry(bucket).or_default().insert(id);
        self.len += 1;
        Ok(())
    }

    /// Drops the buckets whose every id expired at or before `now_ms`. Cost: one map step
    /// per dropped bucket, whatever the number of ids in it.
    fn drop_expired(&mut self, now_ms: i64) {
        // Bucket b holds expiries in [b * W, (b + 1) * W): all expired once now >= (b + 1) * W.
        let first_live_bucket = now_ms.div_euclid(USED_BUCKET_MS);
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() >= first_live_bucket {
                break;
            }
            self.len -= entry.remove().len();
        }
        self.dropped_before_bucket = self.dropped_before_bucket.max(first_live_bucket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret, long enough to mean it";
    const BITS: u8 = 8;
    const LIFETIME_MS: i64 = 60_000;
    const NOW_MS: i64 = 1_700_000_000_000;

    fn issuer() -> PowIssuer {
        PowIssuer::new(SECRET, BITS, LIFETIME_MS)
    }

    fn solved(issuer: &PowIssuer) -> (PowChallenge, String) {
        let challenge = issuer.issue("alice", "promo-1", "sku-1", NOW_MS);
        let nonce = solve(&challenge.challenge, challenge.difficulty_bits);
        (challenge, nonce)
    }

    fn verify_as_alice(
        issuer: &PowIssuer,
        challenge: &str,
        nonce: &str,
        now_ms: i64,
    ) -> Result<(), PowRefusal> {
        issuer.verify("alice", "promo-1", "sku-1", challenge, nonce, now_ms)
    }

    /// A nonce that does not solve `challenge` at `bits` (the first counter value that fails).
    fn wrong_nonce(challenge: &str, bits: u8) -> String {
        (0u64..)
            .map(|n| n.to_string())
            .find(|nonce| leading_zero_bits(&pow_digest(challenge, nonce)) < u32::from(bits))
            .unwrap_or_default()
    }

    /// `challenge` with its part `index` (0 = version .. 4 = mac) replaced.
    fn with_part(challenge: &str, index: usize, part: &str) -> String {
        let mut parts: Vec<&str> = challenge.split('.').collect();
        parts[index] = part;
        parts.join(".")
    }

    #[test]
    fn challenge_text_has_the_documented_shape() {
        let challenge = issuer().issue("alice", "promo-1", "sku-1", NOW_MS);
        let parts: Vec<&str> = challenge.challenge.split('.').collect();
        assert_eq!(parts.len(), 5, "{}", challenge.challenge);
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[2], (NOW_MS + LIFETIME_MS).to_string());
        assert_eq!(parts[3], BITS.to_string());
        assert_eq!(challenge.expires_at_ms, NOW_MS + LIFETIME_MS);
        assert_eq!(challenge.difficulty_bits, BITS);
        assert!(challenge.challenge.len() <= CHALLENGE_BYTES_MAX);
        assert!(challenge
            .challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert!(!challenge.challenge.contains("alice") && !challenge.challenge.contains("promo-1"));
    }

    #[test]
    fn two_challenges_differ() {
        let issuer = issuer();
        let first = issuer.issue("alice", "promo-1", "sku-1", NOW_MS);
        let second = issuer.issue("alice", "promo-1", "sku-1", NOW_MS);
        assert_ne!(first.challenge, second.challenge);
    }

    #[test]
    fn solved_challenge_verifies_once_and_the_replay_is_refused() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        assert_eq!(
            verify_as_alice(&issuer, &challenge.challenge, &nonce, NOW_MS + 1),
            Ok(())
        );
        assert_eq!(
            verify_as_alice(&issuer, &challenge.challenge, &nonce, NOW_MS + 2),
            Err(PowRefusal::Replayed)
        );
        assert_eq!(issuer.used_challenges(), 1);
    }

    #[test]
    fn replay_with_another_nonce_is_refused_too() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        assert_eq!(
            verify_as_alice(&issuer, &challenge.challenge, &nonce, NOW_MS),
            Ok(())
        );
        // Any other solution of the same challenge: search past the first one.
        let first: u64 = nonce.parse().unwrap_or_default();
        let other = ((first + 1)..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&pow_digest(&challenge.challenge, n)) >= u32::from(BITS))
            .unwrap_or_default();
        assert_eq!(
            verify_as_alice(&issuer, &challenge.challenge, &other, NOW_MS),
            Err(PowRefusal::Replayed)
        );
    }

    #[test]
    fn another_node_with_the_same_secret_verifies_the_challenge() {
        let (challenge, nonce) = solved(&issuer());
        let restarted = issuer();
        assert_eq!(
            verify_as_alice(&restarted, &challenge.challenge, &nonce, NOW_MS),
            Ok(())
        );
        let other_secret = PowIssuer::new(b"another secret", BITS, LIFETIME_MS);
        assert_eq!(
            verify_as_alice(&other_secret, &challenge.challenge, &nonce, NOW_MS),
            Err(PowRefusal::Forged)
        );
    }

    #[test]
    fn challenge_of_another_shopper_promotion_or_item_is_forged() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        let text = &challenge.challenge;
        for (user, promotion, sku) in [
            ("bob", "promo-1", "sku-1"),
            ("alice", "promo-2", "sku-1"),
            ("alice", "promo-1", "sku-2"),
        ] {
            assert_eq!(
                issuer.verify(user, promotion, sku, text, &nonce, NOW_MS),
                Err(PowRefusal::Forged),
                "{user} {promotion} {sku}"
            );
        }
        // Shifting characters between the bound names does not fool the MAC either.
        assert_eq!(
            issuer.verify("alicep", "romo-1", "sku-1", text, &nonce, NOW_MS),
            Err(PowRefusal::Forged)
        );
        // None of those refusals used the challenge up.
        assert_eq!(verify_as_alice(&issuer, text, &nonce, NOW_MS), Ok(()));
    }

    #[test]
    fn tampered_expiry_bits_or_id_is_forged() {
        let issuer = issuer();
        let (challenge, _) = solved(&issuer);
        let text = &challenge.challenge;
        let later = (NOW_MS + 10 * LIFETIME_MS).to_string();
        let other_id = URL_SAFE_NO_PAD.encode([7u8; CHALLENGE_ID_BYTES]);
        for tampered in [
            with_part(text, 2, &later),
            with_part(text, 3, "9"),
            with_part(text, 1, &other_id),
        ] {
            // Solve the tampered text so that only the MAC can refuse it.
            let nonce = solve(&tampered, BITS + 1);
            assert_eq!(
                verify_as_alice(&issuer, &tampered, &nonce, NOW_MS),
                Err(PowRefusal::Forged),
                "{tampered}"
            );
        }
    }

    #[test]
    fn expired_challenge_is_refused() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        let text = &challenge.challenge;
        assert_eq!(
            verify_as_alice(&issuer, text, &nonce, challenge.expires_at_ms),
            Err(PowRefusal::Expired)
        );
        assert_eq!(
            verify_as_alice(&issuer, text, &nonce, challenge.expires_at_ms - 1),
            Ok(())
        );
    }

    #[test]
    fn challenge_issued_under_a_lower_difficulty_is_refused() {
        let easy = PowIssuer::new(SECRET, BITS - 2, LIFETIME_MS);
        let challenge = easy.issue("alice", "promo-1", "sku-1", NOW_MS);
        let nonce = solve(&challenge.challenge, BITS - 2);
        assert_eq!(
            verify_as_alice(&issuer(), &challenge.challenge, &nonce, NOW_MS),
            Err(PowRefusal::TooEasy)
        );
        // A harder one than required is fine.
        let hard = PowIssuer::new(SECRET, BITS + 2, LIFETIME_MS);
        let challenge = hard.issue("alice", "promo-1", "sku-1", NOW_MS);
        let nonce = solve(&challenge.challenge, BITS + 2);
        assert_eq!(
            verify_as_alice(&issuer(), &challenge.challenge, &nonce, NOW_MS),
            Ok(())
        );
    }

    #[test]
    fn unsolved_nonce_is_refused_and_does_not_burn_the_challenge() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        let text = &challenge.challenge;
        let wrong = wrong_nonce(text, BITS);
        assert_eq!(
            verify_as_alice(&issuer, text, &wrong, NOW_MS),
            Err(PowRefusal::Unsolved)
        );
        assert_eq!(issuer.used_challenges(), 0);
        assert_eq!(verify_as_alice(&issuer, text, &nonce, NOW_MS), Ok(()));
    }

    #[test]
    fn malformed_challenges_are_refused() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        let text = &challenge.challenge;
        let cases = [
            String::new(),
            "v1".to_owned(),
            "not a challenge".to_owned(),
            with_part(text, 0, "v2"),
            with_part(text, 1, "short"),
            with_part(text, 1, "!!!!!!!!!!!!!!!!!!!!!!"),
            with_part(text, 2, "soon"),
            with_part(text, 3, "256"),
            with_part(text, 3, "-1"),
            with_part(text, 4, "*"),
            format!("{text}.extra"),
            text.replacen('.', "", 1),
        ];
        for case in cases {
            assert_eq!(
                verify_as_alice(&issuer, &case, &nonce, NOW_MS),
                Err(PowRefusal::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn oversize_challenge_or_nonce_is_refused_before_anything_else() {
        let issuer = issuer();
        let (challenge, nonce) = solved(&issuer);
        let long_challenge = format!("{}{}", challenge.challenge, "0".repeat(CHALLENGE_BYTES_MAX));
        assert_eq!(
            verify_as_alice(&issuer, &long_challenge, &nonce, NOW_MS),
            Err(PowRefusal::Malformed)
        );
        let long_nonce = "0".repeat(NONCE_BYTES_MAX + 1);
        assert_eq!(
            verify_as_alice(&issuer, &challenge.challenge, &long_nonce, NOW_MS),
            Err(PowRefusal::Malformed)
        );
        // A nonce of exactly the cap is judged on its merits.
        let at_cap = "0".repeat(NONCE_BYTES_MAX);
        assert_ne!(
            verify_as_alice(&issuer, &challenge.challenge, &at_cap, NOW_MS),
            Err(PowRefusal::Malformed)
        );
    }

    #[test]
    fn used_set_forgets_expired_challenges() {
        let issuer = issuer();
        let (first, first_nonce) = solved(&issuer);
        assert_eq!(
            verify_as_alice(&issuer, &first.challenge, &first_nonce, NOW_MS),
            Ok(())
        );
        assert_eq!(issuer.used_challenges(), 1);
        // Recording another challenge once the first has expired drops the first.
        let later_ms = first.expires_at_ms + USED_BUCKET_MS;
        let second = issuer.issue("alice", "promo-1", "sku-1", later_ms);
        let second_nonce = solve(&second.challenge, BITS);
        assert_eq!(
            verify_as_alice(&issuer, &second.challenge, &second_nonce, later_ms),
            Ok(())
        );
        assert_eq!(issuer.used_challenges(), 1);
        // The forgotten one is refused all the same: it is expired.
        assert_eq!(
            verify_as_alice(&issuer, &first.challenge, &first_nonce, later_ms),
            Err(PowRefusal::Expired)
        );
    }

    #[test]
    fn full_used_set_refuses_with_busy_until_entries_expire() {
        let issuer = PowIssuer::with_used_max(SECRET, BITS, LIFETIME_MS, 2);
        for _ in 0..2 {
            let (challenge, nonce) = solved(&issuer);
            assert_eq!(
                verify_as_alice(&issuer, &challenge.challenge, &nonce, NOW_MS),
                Ok(())
            );
        }
        let (third, third_nonce) = solved(&issuer);
        let refusal = verify_as_alice(&issuer, &third.challenge, &third_nonce, NOW_MS);
        assert_eq!(refusal, Err(PowRefusal::Busy));
        assert!(refusal.err().is_some_and(|r| r.is_busy()));
        assert_eq!(issuer.used_challenges(), 2);
        // Busy did not burn it: once the first two expire there is room (a later challenge,
        // since the third expires with them).
        let later_ms = NOW_MS + LIFETIME_MS + USED_BUCKET_MS;
        let fourth = issuer.issue("alice", "promo-1", "sku-1", later_ms);
        let fourth_nonce = solve(&fourth.challenge, BITS);
        assert_eq!(
            verify_as_alice(&issuer, &fourth.challenge, &fourth_nonce, later_ms),
            Ok(())
        );
        assert_eq!(issuer.used_challenges(), 1);
    }

    #[test]
    fn replay_after_a_sweep_with_a_clock_behind_is_refused() {
        let issuer = issuer();
        let (first, first_nonce) = solved(&issuer);
        assert_eq!(
            verify_as_alice(&issuer, &first.challenge, &first_nonce, NOW_MS),
            Ok(())
        );
        // A request whose clock reads past the first's expiry sweeps it away...
        let later_ms = first.expires_at_ms + USED_BUCKET_MS;
        let second = issuer.issue("alice", "promo-1", "sku-1", later_ms);
        let second_nonce = solve(&second.challenge, BITS);
        assert_eq!(
            verify_as_alice(&issuer, &second.challenge, &second_nonce, later_ms),
            Ok(())
        );
        // ...and a replay judged with an older clock still does not get through.
        assert_eq!(
            verify_as_alice(
                &issuer,
                &first.challenge,
                &first_nonce,
                first.expires_at_ms - 1
            ),
            Err(PowRefusal::Expired)
        );
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0x00, 0x80]), 8);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x0f]), 20);
        assert_eq!(leading_zero_bits(&[0x00; 32]), 256);
        assert_eq!(leading_zero_bits(&[]), 0);
    }

    #[test]
    fn solve_finds_a_decimal_nonce_that_meets_the_difficulty() {
        let nonce = solve("v1.example", 12);
        assert!(nonce.bytes().all(|b| b.is_ascii_digit()), "{nonce}");
        assert!(leading_zero_bits(&pow_digest("v1.example", &nonce)) >= 12);
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(1_234_567_890, &mut digits), b"1234567890");
        assert_eq!(
            decimal(u64::MAX, &mut digits),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let text = format!("{:?}", issuer());
        assert!(text.contains("difficulty_bits"));
        assert!(!text.contains("mac_keyed") && !text.contains("secret"));
    }
}
