//! The knobs of `seckill-load bots`, their defaults and their bounds.

use serde::Serialize;

use super::mode::Mode;
use crate::pow::DIFFICULTY_BITS_MAX;

/// Bot ids in the farm by default.
pub const DEFAULT_BOTS: u64 = 5_000;
/// The farm's machines (client addresses) by default.
pub const DEFAULT_BOT_ADDRESSES: u64 = 8;
/// The farm's requests in flight at once by default: more than the people, as a farm is.
pub const DEFAULT_BOT_CONCURRENCY: u64 = 512;
/// People by default, one id and one address each.
pub const DEFAULT_PEOPLE: u64 = 400;
/// People start within this many milliseconds of the sale's start (a bot starts at once).
pub const DEFAULT_PEOPLE_REACTION_MS: u64 = 300;
/// Units of the item by default: fewer than the people, so that the sale sells out as soon
/// as people alone could buy it all.
pub const DEFAULT_STOCK: u64 = 200;
/// Leading zero bits of a proof of work by default. Lower than the server's 20 so that 400
/// people solving on the 2 cores of the development machine take a second, not the run:
/// what the comparison needs is that a farm of 8 machines solves 8 challenges while 400
/// people solve 400, and that holds at any difficulty.
pub const DEFAULT_POW_DIFFICULTY_BITS: u32 = 16;
/// `[rate_limit.ip]` in the limit modes: a person sends a token and a purchase request, so a
/// burst of 3 never refuses one; a farm machine gets 1 request a second once its burst is
/// spent.
pub const DEFAULT_IP_PER_S: u64 = 1;
pub const DEFAULT_IP_BURST: u64 = 3;
/// A mode's sale stops after this many seconds even if the item has not sold out.
pub const DEFAULT_MODE_TIMEOUT_S: u64 = 60;
pub const DEFAULT_SEED: u64 = 42;

/// Most bot ids (`b00000-0000000`: 7 digits per address).
pub const BOTS_MAX: u64 = 1_000_000;
/// Most farm machines: each has a solver thread in the pow modes.
pub const BOT_ADDRESSES_MAX: u64 = 1_024;
/// Most people: each solves on a thread of their own, all at once at worst.
pub const PEOPLE_MAX: u64 = 10_000;

/// Everything `bots` needs besides the server binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BotsOptions {
    pub modes: Vec<Mode>,
    pub bots: u64,
    pub bot_addresses: u64,
    /// The farm's requests in flight at once (one task each, spread over its addresses).
    pub bot_concurrency: u64,
    /// Bots wait Retry-After on 429 (and as long before a new try on `tokens_exhausted`)
    /// instead of trying again at once.
    pub bots_heed_retry_after: bool,
    pub people: u64,
    /// Each person starts at a random moment (seeded) within this many ms of the start.
    pub people_reaction_ms: u64,
    pub stock: u64,
    pub pow_difficulty_bits: u32,
    /// `[rate_limit.ip]` of the limit modes.
    pub ip_per_s: u64,
    pub ip_burst: u64,
    pub mode_timeout_s: u64,
    pub seed: u64,
    /// Fail unless people get a larger share with pow+limit than with off.
    pub expect_people_gain: bool,
}

impl Default for BotsOptions {
    fn default() -> Self {
        BotsOptions {
            modes: Mode::ALL.to_vec(),
            bots: DEFAULT_BOTS,
            bot_addresses: DEFAULT_BOT_ADDRESSES,
            bot_concurrency: DEFAULT_BOT_CONCURRENCY,
            bots_heed_retry_after: false,
            people: DEFAULT_PEOPLE,
            people_reaction_ms: DEFAULT_PEOPLE_REACTION_MS,
            stock: DEFAULT_STOCK,
            pow_difficulty_bits: DEFAULT_POW_DIFFICULTY_BITS,
            ip_per_s: DEFAULT_IP_PER_S,
            ip_burst: DEFAULT_IP_BURST,
            mode_timeout_s: DEFAULT_MODE_TIMEOUT_S,
            seed: DEFAULT_SEED,
            expect_people_gain: false,
        }
    }
}

/// A combination of knobs the scenario cannot play.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("no mode to play: give --modes off,limit,pow,pow+limit or a part of it")]
    NoModes,
    #[error("{name} must be within {min}..={max}, not {value}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("{bots} bot ids cannot fill {addresses} addresses: give at least one id per address")]
    FewerBotsThanAddresses { bots: u64, addresses: u64 },
}

impl BotsOptions {
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.modes.is_empty() {
            return Err(OptionsError::NoModes);
        }
        let ranges = [
            ("--bots", self.bots, 1, BOTS_MAX),
            ("--bot-addresses", self.bot_addresses, 1, BOT_ADDRESSES_MAX),
            ("--bot-concurrency", self.bot_concurrency, 1, BOTS_MAX),
            ("--people", self.people, 1, PEOPLE_MAX),
            ("--stock", self.stock, 1, 1_000_000_000),
            (
                "--pow-difficulty-bits",
                u64::from(self.pow_difficulty_bits),
                1,
                u64::from(DIFFICULTY_BITS_MAX),
            ),
            ("--ip-per-s", self.ip_per_s, 1, u64::from(u32::MAX)),
            ("--ip-burst", self.ip_burst, 1, u64::from(u32::MAX)),
            ("--mode-timeout-s", self.mode_timeout_s, 1, 3_600),
        ];
        for (name, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(OptionsError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        if self.bots < self.bot_addresses {
            return Err(OptionsError::FewerBotsThanAddresses {
                bots: self.bots,
                addresses: self.bot_addresses,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_playable_and_bad_knobs_are_named() {
        assert_eq!(BotsOptions::default().validate(), Ok(()));
        let too_hard = BotsOptions {
            pow_difficulty_bits: DIFFICULTY_BITS_MAX + 1,
            ..BotsOptions::default()
        };
        let refused = too_hard.validate().expect_err("too hard");
        assert!(
            refused.to_string().contains("--pow-difficulty-bits"),
            "{refused}"
        );
        let thin_farm = BotsOptions {
            bots: 4,
            ..BotsOptions::default()
        };
        assert_eq!(
            thin_farm.validate(),
            Err(OptionsError::FewerBotsThanAddresses {
                bots: 4,
                addresses: DEFAULT_BOT_ADDRESSES
            })
        );
        let nothing = BotsOptions {
            modes: Vec::new(),
            ..BotsOptions::default()
        };
        assert_eq!(nothing.validate(), Err(OptionsError::NoModes));
    }
}
