//! The four settings of the checks that `seckill-load bots` compares: neither check, the
//! per-address rate limit alone, the proof of work alone, both.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Which of the checks of api.md "v2: keeping bots out" a mode's server and promotion have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// No proof of work, no per-address limit (the per-shopper limits stay at the server's
    /// defaults in every mode).
    #[serde(rename = "off")]
    Off,
    /// `[rate_limit.ip]` only.
    #[serde(rename = "limit")]
    Limit,
    /// `"human_check": "pow"` only.
    #[serde(rename = "pow")]
    Pow,
    /// Both.
    #[serde(rename = "pow+limit")]
    PowLimit,
}

/// A `--modes` value that names no mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode '{0}': expected off, limit, pow or pow+limit")]
pub struct UnknownMode(String);

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Off, Mode::Limit, Mode::Pow, Mode::PowLimit];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Limit => "limit",
            Mode::Pow => "pow",
            Mode::PowLimit => "pow+limit",
        }
    }

    /// The promotion asks for a proof of work before a token.
    pub fn pow(self) -> bool {
        matches!(self, Mode::Pow | Mode::PowLimit)
    }

    /// The server limits token and purchase requests per client address.
    pub fn limit(self) -> bool {
        matches!(self, Mode::Limit | Mode::PowLimit)
    }

    /// The id of the mode's promotion (`+` is not an identifier character).
    pub fn promotion_id(self) -> String {
        format!("bots-{}", self.name().replace('+', "-"))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(text: &str) -> Result<Mode, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == text.trim())
            .ok_or_else(|| UnknownMode(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_parses_from_its_name_and_unknown_names_are_refused() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
        }
        assert_eq!("pow+limit".parse::<Mode>(), Ok(Mode::PowLimit));
        assert!("captcha".parse::<Mode>().is_err());
    }

    #[test]
    fn modes_turn_on_exactly_their_checks_and_name_valid_promotions() {
        let checks: Vec<(bool, bool)> = Mode::ALL.iter().map(|m| (m.pow(), m.limit())).collect();
        assert_eq!(
            checks,
            [(false, false), (false, true), (true, false), (true, true)]
        );
        assert_eq!(Mode::PowLimit.promotion_id(), "bots-pow-limit");
        assert!(Mode::ALL
            .iter()
            .all(|mode| crate::scenario::is_identifier(&mode.promotion_id())));
    }
}
