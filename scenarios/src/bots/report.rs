//! What `seckill-load bots` found: per mode, the share of the stock each population got,
//! their requests and answers, the wall time and the invariant verdicts; the table that
//! puts the modes side by side; and the judgement (pure, so that tests can feed it broken
//! sales).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mode::Mode;
use super::options::BotsOptions;
use super::tally::Tally;
use crate::check::{all_passed, Verdict};
use crate::report::counts_text;

/// The item's figures as the admin API reports them after the sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockStats {
    pub stock: u64,
    pub remaining: u64,
    pub reserved: u64,
    pub sold: u64,
}

/// One population in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct PopulationReport {
    /// Shopper ids.
    pub shoppers: u64,
    /// Client addresses they come from.
    pub addresses: u64,
    pub units: u64,
    pub share_of_stock: f64,
    pub requests: u64,
    /// `route status code` -> answers, e.g. `token 429 rate_limited`.
    pub answers: BTreeMap<String, u64>,
    /// `route kind` -> requests that got no answer.
    pub unanswered: BTreeMap<String, u64>,
    /// How the shoppers' tries ended: `bought`, `sold_out`, `refused`, `gave_up`, `time_up`.
    pub endings: BTreeMap<String, u64>,
    pub solves: u64,
    pub solve_failures: u64,
    /// Mean wall time of one solve on its thread (the cores are shared: see the README).
    pub solve_ms_mean: f64,
    pub hashes: u64,
    /// When the population's last unit was bought, after the sale's start.
    pub last_unit_s: Option<f64>,
}

impl PopulationReport {
    pub fn of(tally: &Tally, shoppers: u64, addresses: u64, stock: u64) -> PopulationReport {
        PopulationReport {
            shoppers,
            addresses,
            units: tally.units(),
            share_of_stock: share(tally.units(), stock),
            requests: tally.requests(),
            answers: tally.answers_text(),
            unanswered: tally.unanswered_text(),
            endings: tally.endings_text(),
            solves: tally.solves(),
            solve_failures: tally.solve_failures(),
            solve_ms_mean: tally.solve_ms_mean(),
            hashes: tally.hashes(),
            last_unit_s: tally.last_unit_at().map(|at| at.as_secs_f64()),
        }
    }

    fn write(&self, out: &mut String, mode: Mode, label: &str) {
        let _ = writeln!(
            out,
            "[{mode}] {label}: {} ids on {} addresses, {} units, {} requests, endings {}",
            self.shoppers,
            self.addresses,
            self.units,
            self.requests,
            counts_text(&self.endings)
        );
        if self.solves > 0 || self.solve_failures > 0 {
            let _ = writeln!(
                out,
                "  {} solves ({} failed), {:.1} ms each on average, {} hashes",
                self.solves, self.solve_failures, self.solve_ms_mean, self.hashes
            );
        }
        let _ = writeln!(out, "  answers: {}", counts_text(&self.answers));
        if !self.unanswered.is_empty() {
            let _ = writeln!(out, "  no answer: {}", counts_text(&self.unanswered));
        }
    }
}

/// Units as a share of the stock (0..=1).
fn share(units: u64, stock: u64) -> f64 {
    if stock == 0 {
        return 0.0;
    }
    units as f64 / stock as f64
}

/// One mode's sale.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub promotion_id: String,
    pub stats: StockStats,
    pub bots: PopulationReport,
    pub people: PopulationReport,
    /// From the start of the sale until the last shopper of either population was done.
    pub wall_s: f64,
    pub checks: Vec<Verdict>,
    pub passed: bool,
}

impl ModeReport {
    pub fn new(
        mode: Mode,
        promotion_id: String,
        stats: StockStats,
        (bots, people): (&Tally, &Tally),
        wall: Duration,
        options: &BotsOptions,
    ) -> ModeReport {
        let checks = check_sale(&stats, bots, people);
        let passed = all_passed(&checks);
        ModeReport {
            mode,
            promotion_id,
            stats,
            bots: PopulationReport::of(bots, options.bots, options.bot_addresses, stats.stock),
            people: PopulationReport::of(people, options.people, options.people, stats.stock),
            wall_s: wall.as_secs_f64(),
            checks,
            passed,
        }
    }

    fn write(&self, out: &mut String) {
        self.bots.write(out, self.mode, "bots");
        self.people.write(out, self.mode, "people");
        let s = &self.stats;
        let _ = writeln!(
            out,
            "[{}] stock {}: remaining {}, reserved {}, sold {}",
            self.mode, s.stock, s.remaining, s.reserved, s.sold
        );
        for verdict in &self.checks {
            let mark = if verdict.passed { " ok " } else { "FAIL" };
            let _ = writeln!(out, "  [{mark}] {}: {}", verdict.name, verdict.detail);
        }
    }
}

/// The invariants of one sale: the stock balances, nothing is oversold (by the stats and by
/// the units the runner was answered), every acknowledged unit is in the stats, and every
/// answer is one api.md allows on its route.
pub fn check_sale(stats: &StockStats, bots: &Tally, people: &Tally) -> Vec<Verdict> {
    let stock = stats.stock;
    let live = stats.reserved + stats.sold;
    let acknowledged = bots.units() + people.units();
    let total = stats.remaining + live;
    let mut breaches = bots.contract_breaches();
    breaches.extend(people.contract_breaches());
    vec![
        verdict(
            "stock_balance",
            total == stock,
            format!("remaining + reserved + sold = {total}, stock {stock}"),
        ),
        verdict(
            "no_oversell",
            live <= stock && acknowledged <= stock,
            format!("{live} units taken, {acknowledged} acknowledged, stock {stock}"),
        ),
        acknowledged_verdict(live, acknowledged, bots, people),
        if breaches.is_empty() {
            Verdict::pass(
                "contract_answers",
                "every answer is one api.md gives on its route",
            )
        } else {
            Verdict::fail("contract_answers", breaches.join("; "))
        },
    ]
}

fn verdict(name: &str, passed: bool, detail: String) -> Verdict {
    if passed {
        Verdict::pass(name, detail)
    } else {
        Verdict::fail(name, detail)
    }
}

/// Every unit answered 201 (or 200) is in the stats; when some purchases got no answer, they
/// may have bought units nobody was told of, so the stats may only be higher.
fn acknowledged_verdict(live: u64, acknowledged: u64, bots: &Tally, people: &Tally) -> Verdict {
    let unanswered = bots.unanswered_purchases() + people.unanswered_purchases();
    let consistent = if unanswered == 0 {
        acknowledged == live
    } else {
        acknowledged <= live && live <= acknowledged + unanswered
    };
    let detail = format!(
        "{acknowledged} units acknowledged, {live} taken by the stats, {unanswered} purchases unanswered"
    );
    verdict("acknowledged_units", consistent, detail)
}

/// Why people did not do better with both checks than with none, if they did not.
pub fn people_gain_failure(modes: &[ModeReport]) -> Option<String> {
    let share_in = |mode: Mode| {
        modes
            .iter()
            .find(|report| report.mode == mode)
            .map(|report| report.people.share_of_stock)
    };
    match (share_in(Mode::Off), share_in(Mode::PowLimit)) {
        (Some(off), Some(both)) if both <= off => Some(format!(
            "people got {:.1}% of the stock with pow+limit, not more than the {:.1}% they got with off",
            both * 100.0,
            off * 100.0
        )),
        (Some(_), Some(_)) => None,
        _ => Some("--expect-people-gain needs both modes off and pow+limit in --modes".into()),
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BotsReport {
    pub target: String,
    pub options: BotsOptions,
    /// Hashes one thread of this machine computes per second (nothing else running).
    pub hashes_per_s_one_thread: f64,
    /// What one solve at `pow_difficulty_bits` costs one such thread on average.
    pub solve_ms_one_thread: f64,
    pub modes: Vec<ModeReport>,
    pub failures: Vec<String>,
    pub passed: bool,
}

impl BotsReport {
    pub fn new(
        target: String,
        options: BotsOptions,
        hashes_per_s_one_thread: f64,
        modes: Vec<ModeReport>,
    ) -> BotsReport {
        let mut failures: Vec<String> = modes
            .iter()
            .flat_map(|report| {
                report
                    .checks
                    .iter()
                    .filter(|verdict| !verdict.passed)
                    .map(move |verdict| {
                        format!("[{}] {}: {}", report.mode, verdict.name, verdict.detail)
                    })
            })
            .collect();
        if options.expect_people_gain {
            failures.extend(people_gain_failure(&modes));
        }
        let hashes_per_solve = 2f64.powi(options.pow_difficulty_bits as i32);
        BotsReport {
            target,
            solve_ms_one_thread: hashes_per_solve / hashes_per_s_one_thread.max(1e-9) * 1000.0,
            hashes_per_s_one_thread,
            options,
            modes,
            passed: failures.is_empty(),
            failures,
        }
    }

    /// The terminal rendering: the settings, the table, then each mode's details.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_settings(&mut out);
        self.write_table(&mut out);
        for report in &self.modes {
            report.write(&mut out);
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  [FAIL] {failure}");
        }
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "verdict: {verdict}");
        out
    }

    fn write_settings(&self, out: &mut String) {
        let o = &self.options;
        let retry = if o.bots_heed_retry_after {
            "heeding Retry-After"
        } else {
            "retrying at once"
        };
        let _ = writeln!(
            out,
            "bots vs people against {}: {} bot ids behind {} addresses ({} requests in flight, {retry}); \
             {} people, one address each, reacting within {} ms; {} units, 1 per shopper",
            self.target,
            o.bots,
            o.bot_addresses,
            o.bot_concurrency,
            o.people,
            o.people_reaction_ms,
            o.stock
        );
        let _ = writeln!(
            out,
            "pow {} bits ({:.1} Mhash/s on one thread here: {:.1} ms a solve); address limit {}/s, burst {}",
            o.pow_difficulty_bits,
            self.hashes_per_s_one_thread / 1e6,
            self.solve_ms_one_thread,
            o.ip_per_s,
            o.ip_burst
        );
    }

    fn write_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<10} {:>16} {:>16} {:>13} {:>15} {:>8}  checks",
            "mode", "bots got", "people got", "bot requests", "people requests", "wall s"
        );
        for report in &self.modes {
            let got =
                |p: &PopulationReport| format!("{} ({:.1}%)", p.units, p.share_of_stock * 100.0);
            let _ = writeln!(
                out,
                "{:<10} {:>16} {:>16} {:>13} {:>15} {:>8.2}  {}",
                report.mode.name(),
                got(&report.bots),
                got(&report.people),
                report.bots.requests,
                report.people.requests,
                report.wall_s,
                if report.passed { "pass" } else { "FAIL" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bots::tally::Route;

    fn sale(bot_units: u64, people_units: u64) -> (Tally, Tally) {
        let mut bots = Tally::default();
        let mut people = Tally::default();
        for _ in 0..bot_units {
            bots.answer(Route::Purchase, 201, "");
            bots.unit(Duration::from_millis(10));
        }
        for _ in 0..people_units {
            people.answer(Route::Purchase, 201, "");
            people.unit(Duration::from_millis(20));
        }
        bots.answer(Route::Token, 409, "sold_out");
        (bots, people)
    }

    fn stats(stock: u64, remaining: u64, reserved: u64) -> StockStats {
        StockStats {
            stock,
            remaining,
            reserved,
            sold: 0,
        }
    }

    fn failed(verdicts: &[Verdict]) -> Vec<&str> {
        verdicts
            .iter()
            .filter(|verdict| !verdict.passed)
            .map(|verdict| verdict.name.as_str())
            .collect()
    }

    #[test]
    fn a_sold_out_sale_that_adds_up_passes() {
        let (bots, people) = sale(15, 5);
        let verdicts = check_sale(&stats(20, 0, 20), &bots, &people);
        assert!(failed(&verdicts).is_empty(), "{verdicts:?}");
    }

    #[test]
    fn oversold_stock_and_unbalanced_stats_fail() {
        let (bots, people) = sale(15, 6);
        let verdicts = check_sale(&stats(20, 0, 21), &bots, &people);
        assert_eq!(failed(&verdicts), ["stock_balance", "no_oversell"]);
    }

    #[test]
    fn a_lost_acknowledgement_and_an_answer_off_contract_fail() {
        let (bots, mut people) = sale(10, 5);
        people.answer(Route::Token, 400, "invalid_request");
        let verdicts = check_sale(&stats(20, 6, 14), &bots, &people);
        assert_eq!(
            failed(&verdicts),
            ["acknowledged_units", "contract_answers"]
        );
    }

    fn mode_report(mode: Mode, people_units: u64) -> ModeReport {
        let (bots, people) = sale(20 - people_units, people_units);
        let options = BotsOptions::default();
        ModeReport::new(
            mode,
            mode.promotion_id(),
            stats(20, 0, 20),
            (&bots, &people),
            Duration::from_secs(1),
            &options,
        )
    }

    #[test]
    fn people_must_gain_with_both_checks_when_asked_to() {
        let gained = [mode_report(Mode::Off, 2), mode_report(Mode::PowLimit, 12)];
        assert_eq!(people_gain_failure(&gained), None);
        let same = [mode_report(Mode::Off, 2), mode_report(Mode::PowLimit, 2)];
        assert!(people_gain_failure(&same).is_some());
        assert!(people_gain_failure(&gained[..1]).is_some());
        let options = BotsOptions {
            expect_people_gain: true,
            ..BotsOptions::default()
        };
        let report = BotsReport::new("test".into(), options, 1e6, same.to_vec());
        assert!(!report.passed);
        assert!(
            report.to_text().contains("not more than"),
            "{}",
            report.to_text()
        );
    }
}
