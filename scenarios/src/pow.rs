//! Proof-of-work answers as a shopper's page computes them (api.md, "v2: keeping bots out"):
//! a `nonce` such that SHA-256(challenge + nonce) starts with `difficulty_bits` zero bits.
//!
//! Written from the contract rather than shared with the server, so that a misreading on
//! either side shows up as 403 `human_check_failed` in a scenario instead of agreeing with
//! itself. Nonces are a decimal counter, the shortest strings that do the job.
//!
//! Two ways to run a solve, for the two populations of `seckill-load bots`:
//! - [`solve_on_own_thread`]: a thread of its own per solve, because each person's browser
//!   has a CPU of its own;
//! - [`SharedSolver`]: one worker thread per client address, whose shoppers queue their
//!   challenges on it, because a farm of thousands of ids on a few machines has the CPU of
//!   those few machines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// The hardest challenge the runner takes on: 2^32 hashes are minutes of one core already.
pub const DIFFICULTY_BITS_MAX: u32 = 32;
/// A search gives up after 2^(bits + this) nonces: the chance that the first solution lies
/// further is e^-256.
const TRIES_MARGIN_BITS: u32 = 8;
/// Stack of a solver thread: the search itself needs a few hundred bytes; thousands of
/// people solving at once should not reserve 2 MiB each.
const SOLVER_STACK_BYTES: usize = 256 * 1024;
/// Decimal digits of the largest u64.
const U64_DIGITS: usize = 20;

/// A nonce that solves a challenge, and what finding it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowSolution {
    pub nonce: String,
    /// Nonces hashed, the winning one included.
    pub hashes: u64,
    /// Wall time of the search on its thread (time-sliced with every other thread here).
    pub elapsed: Duration,
}

/// Why a solve produced no nonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    #[error(
        "a challenge of {0} bits is harder than the {DIFFICULTY_BITS_MAX} bits the runner solves"
    )]
    TooHard(u32),
    #[error("no nonce among the first {0} solves the challenge")]
    NotFound(u64),
    #[error("starting a solver thread: {0}")]
    Spawn(String),
    #[error("the solver thread stopped before answering")]
    Stopped,
    /// The farm stopped (the item sold out) while the challenge waited in the queue.
    #[error("the farm stopped; the challenge was not solved")]
    Cancelled,
}

/// SHA-256 of the challenge text followed by the nonce text, as the server checks it.
pub fn digest(challenge: &str, nonce: &str) -> [u8; 32] {
    let hash = Sha256::new()
        .chain_update(challenge.as_bytes())
        .chain_update(nonce.as_bytes())
        .finalize();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&hash);
    bytes
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

/// `value` in decimal, written at the end of `digits`.
fn decimal(mut value: u64, digits: &mut [u8; U64_DIGITS]) -> &[u8] {
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

/// Finds the smallest decimal nonce solving `challenge` at `difficulty_bits`, by brute force
/// on the calling thread (about 2^difficulty_bits hashes).
pub fn solve(challenge: &str, difficulty_bits: u32) -> Result<PowSolution, SolveError> {
    if difficulty_bits > DIFFICULTY_BITS_MAX {
        return Err(SolveError::TooHard(difficulty_bits));
    }
    let started = Instant::now();
    let tries_max = 1u64 << (difficulty_bits + TRIES_MARGIN_BITS);
    // The challenge's blocks are hashed once; each try only adds the nonce.
    let prefix = Sha256::new_with_prefix(challenge.as_bytes());
    let mut digits = [0u8; U64_DIGITS];
    for counter in 0..tries_max {
        let nonce = decimal(counter, &mut digits);
        let hash = prefix.clone().chain_update(nonce).finalize();
        if leading_zero_bits(&hash) >= difficulty_bits {
            return Ok(PowSolution {
                nonce: String::from_utf8_lossy(nonce).into_owned(),
                hashes: counter + 1,
                elapsed: started.elapsed(),
            });
        }
    }
    Err(SolveError::NotFound(tries_max))
}

/// Nonces one thread of this machine hashes per second, measured over `hashes` tries: what
/// a solve at N bits costs here is about 2^N of them.
pub fn hashes_per_s(hashes: u64) -> f64 {
    let prefix = Sha256::new_with_prefix(b"seckill-load calibration v1.");
    let mut digits = [0u8; U64_DIGITS];
    let mut zero_bits_max = 0;
    let started = Instant::now();
    for counter in 0..hashes {
        let hash = prefix
            .clone()
            .chain_update(decimal(counter, &mut digits))
            .finalize();
        zero_bits_max = zero_bits_max.max(leading_zero_bits(&hash));
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    // Keeps the loop's work observable, so that it is not optimised away.
    std::hint::black_box(zero_bits_max);
    hashes as f64 / seconds
}

/// Solves on a new thread of its own, as a person's browser solves on its own CPU.
pub async fn solve_on_own_thread(
    challenge: String,
    difficulty_bits: u32,
) -> Result<PowSolution, SolveError> {
    let (reply, answer) = oneshot::channel();
    std::thread::Builder::new()
        .name("pow-person".into())
        .stack_size(SOLVER_STACK_BYTES)
        .spawn(move || {
            let _ = reply.send(solve(&challenge, difficulty_bits));
        })
        .map_err(|error| SolveError::Spawn(error.to_string()))?;
    answer.await.map_err(|_| SolveError::Stopped)?
}

/// One challenge waiting for a shared solver.
#[derive(Debug)]
struct Job {
    challenge: String,
    difficulty_bits: u32,
    reply: oneshot::Sender<Result<PowSolution, SolveError>>,
}

/// One worker thread that solves the challenges of every shopper behind one address, one
/// after the other: a bot farm's machine. Cheap to clone; the thread ends when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct SharedSolver {
    jobs: mpsc::Sender<Job>,
}

impl SharedSolver {
    /// Starts the worker. `queue_max` bounds the challenges waiting (one per shopper task
    /// behind the address is enough); once `stop` is set, waiting challenges are answered
    /// [`SolveError::Cancelled`] instead of solved.
    pub fn start(
        name: &str,
        queue_max: usize,
        stop: Arc<AtomicBool>,
    ) -> Result<SharedSolver, SolveError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(queue_max.max(1));
        std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(SOLVER_STACK_BYTES)
            .spawn(move || {
                while let Some(job) = queue.blocking_recv() {
                    let answer = if stop.load(Ordering::Relaxed) {
                        Err(SolveError::Cancelled)
                    } else {
                        solve(&job.challenge, job.difficulty_bits)
                    };
                    let _ = job.reply.send(answer);
                }
            })
            .map_err(|error| SolveError::Spawn(error.to_string()))?;
        Ok(SharedSolver { jobs })
    }

    /// Queues a challenge and waits for its turn and its solution.
    pub async fn solve(
        &self,
        challenge: String,
        difficulty_bits: u32,
    ) -> Result<PowSolution, SolveError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            challenge,
            difficulty_bits,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| SolveError::Stopped)?;
        answer.await.map_err(|_| SolveError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zero_bits_count_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80, 0, 0]), 0);
        assert_eq!(leading_zero_bits(&[0x00, 0x0f, 0xff]), 12);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x01]), 23);
        assert_eq!(leading_zero_bits(&[0u8; 32]), 256);
    }

    #[test]
    fn the_digest_is_sha256_of_challenge_then_nonce() {
        // FIPS 180-2's test vector for SHA-256("abc").
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = digest("ab", "c")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn a_solution_has_the_bits_asked_for_and_no_smaller_nonce_does() {
        let challenge = "v1.test-challenge.1700000000000.10.mac";
        let solution = solve(challenge, 10).expect("10 bits are solvable");
        assert!(leading_zero_bits(&digest(challenge, &solution.nonce)) >= 10);
        let value: u64 = solution.nonce.parse().expect("a decimal nonce");
        assert_eq!(solution.hashes, value + 1);
        for smaller in 0..value {
            assert!(leading_zero_bits(&digest(challenge, &smaller.to_string())) < 10);
        }
    }

    #[test]
    fn decimal_nonces_match_to_string() {
        let mut digits = [0u8; U64_DIGITS];
        for value in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }

    #[test]
    fn challenges_harder_than_the_bound_are_refused_at_once() {
        assert_eq!(
            solve("x", DIFFICULTY_BITS_MAX + 1),
            Err(SolveError::TooHard(DIFFICULTY_BITS_MAX + 1))
        );
    }

    #[test]
    fn calibration_reports_a_positive_rate() {
        assert!(hashes_per_s(1_000) > 0.0);
    }

    #[tokio::test]
    async fn own_thread_and_shared_solvers_solve_and_a_stopped_farm_cancels() {
        let own = solve_on_own_thread("c1".into(), 8).await.expect("solved");
        assert!(leading_zero_bits(&digest("c1", &own.nonce)) >= 8);

        let stop = Arc::new(AtomicBool::new(false));
        let shared = SharedSolver::start("pow-test", 4, Arc::clone(&stop)).expect("thread");
        let first = shared.solve("c2".into(), 8).await.expect("solved");
        assert!(leading_zero_bits(&digest("c2", &first.nonce)) >= 8);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(
            shared.solve("c3".into(), 8).await,
            Err(SolveError::Cancelled)
        );
    }
}
