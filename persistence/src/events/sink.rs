//! The one interface every events target speaks: [`Sink`] takes a run of [`OutEvent`]s and
//! answers only once the target has acknowledged all of them.
//!
//! A sink knows its target's protocol and nothing of the journal: the cursor, the retries and
//! their backoff belong to the caller (`deliver`). Every sink connects on its first
//! `deliver`, not when it is made, so a target that is down when seckill starts holds back
//! only its own events; [`SinkSetupError`] is for what no retry can fix (a malformed URL).

use std::collections::HashSet;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

/// One CloudEvent ready to send.
#[derive(Debug, Clone)]
pub struct OutEvent {
    /// Stable: the same on every delivery (consumers dedupe on it).
    pub id: String,
    /// The CloudEvents `type`, e.g. "seckill.order.created".
    pub kind: &'static str,
    /// The CloudEvents `subject`: the order id or the promotion id.
    pub subject: String,
    /// The whole CloudEvent, structured-mode JSON.
    pub body: Vec<u8>,
    /// The CloudEvents `time`, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// Why a run of events was not (wholly) delivered. Both are retried by the caller: a
/// refusal too, since a shop's broken endpoint must not lose its events.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No answer, a connection that failed, a timeout, a server error (HTTP 5xx), a broker's
    /// nack: the target may work again by itself.
    #[error("target unreachable: {0}")]
    Unreachable(String),
    /// The target answered and said no: an HTTP status outside 2xx and 5xx for webhooks;
    /// `status` 0 when a broker or the sink itself refuses the event (too large for the
    /// broker, an id too long for AMQP). Needs a person: the events wait until then.
    #[error("target refused the event ({status}): {reason}")]
    Refused { status: u16, reason: String },
}

/// A target of the order events.
pub trait Sink: Send + 'static {
    /// Delivers `events` in order; Ok only once the target acknowledged every one. On Err,
    /// some prefix may have been delivered: the caller resends from the first (at least once).
    fn deliver<'a>(
        &'a mut self,
        events: &'a [OutEvent],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

    /// A short name for logs and metric labels, without secrets ("rabbitmq 127.0.0.1:5672").
    fn label(&self) -> String;
}

/// An `--events` target that no retry can make work (seckill refuses to start: exit 2).
/// Never carries the target's password or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {scheme} events target: {reason}")]
pub struct SinkSetupError {
    /// "nats", "amqp" or "webhook".
    pub scheme: &'static str,
    pub reason: String,
}

impl SinkSetupError {
    pub(crate) fn new(scheme: &'static str, reason: impl Into<String>) -> SinkSetupError {
        SinkSetupError {
            scheme,
            reason: reason.into(),
        }
    }
}

/// Cuts `events` into the runs a pipelining sink may have in flight at once: consecutive,
/// non-empty ranges that cover `events` in order, none holding two events of one subject.
/// A run ends just before the first event whose subject it already holds, so events of
/// different orders still share a round trip.
///
/// A sink sends a whole run before awaiting its first ack, and awaits every ack of a run
/// before sending the next. A failure part-way through a run (a publish lost on a dying
/// socket while a later one goes out after the reconnect, a nack of one while the next is
/// acked) then reorders only events of different subjects: an order's later event is never
/// stored before its earlier one, whatever the caller resends (api.md: "in order for one
/// order").
pub(crate) fn runs(events: &[OutEvent]) -> Vec<Range<usize>> {
    let mut cut = Vec::new();
    let mut start = 0;
    let mut subjects: HashSet<&str> = HashSet::new();
    for (index, event) in events.iter().enumerate() {
        if !subjects.insert(event.subject.as_str()) {
            cut.push(start..index);
            start = index;
            subjects.clear();
            subjects.insert(event.subject.as_str());
        }
    }
    if start < events.len() {
        cut.push(start..events.len());
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(subjects: &[&str]) -> Vec<OutEvent> {
        subjects
            .iter()
            .enumerate()
            .map(|(index, subject)| OutEvent {
                id: format!("e-{index}"),
                kind: "seckill.order.paid",
                subject: (*subject).to_owned(),
                body: b"{}".to_vec(),
                time_ms: 0,
            })
            .collect()
    }

    /// Every sequence of `len` subjects drawn from `alphabet`.
    fn all_sequences(alphabet: &[&'static str], len: usize) -> Vec<Vec<&'static str>> {
        let mut sequences = vec![Vec::new()];
        for _ in 0..len {
            let mut longer = Vec::with_capacity(sequences.len() * alphabet.len());
            for prefix in &sequences {
                for subject in alphabet {
                    let mut sequence = prefix.clone();
                    sequence.push(*subject);
                    longer.push(sequence);
                }
            }
            sequences = longer;
        }
        sequences
    }

    #[test]
    fn an_orders_second_event_waits_for_the_run_of_its_first() {
        let events = events_of(&["o-1", "o-2", "o-1", "o-3", "o-2", "o-2", "o-4"]);
        assert_eq!(runs(&events), vec![0..2, 2..5, 5..7]);
    }

    #[test]
    fn events_of_different_orders_go_in_one_run() {
        let events = events_of(&["o-1", "o-2", "o-3", "p-1", "p-1/phone"]);
        assert_eq!(runs(&events), vec![0..5]);
    }

    #[test]
    fn one_orders_events_go_one_at_a_time_and_nothing_makes_no_run() {
        let events = events_of(&["o-1", "o-1", "o-1"]);
        assert_eq!(runs(&events), vec![0..1, 1..2, 2..3]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn runs_cover_the_chunk_in_order_with_one_event_per_subject_and_cut_only_on_a_repeat() {
        for len in 0..=7 {
            for subjects in all_sequences(&["a", "b", "c"], len) {
                let events = events_of(&subjects);
                let cut = runs(&events);
                let mut next = 0;
                for (number, run) in cut.iter().enumerate() {
                    assert_eq!(run.start, next, "{subjects:?}: a gap or an overlap");
                    assert!(run.start < run.end, "{subjects:?}: an empty run");
                    let in_run: HashSet<&str> = subjects[run.clone()].iter().copied().collect();
                    assert_eq!(
                        in_run.len(),
                        run.len(),
                        "{subjects:?}: a subject twice in {run:?}"
                    );
                    if let Some(following) = cut.get(number + 1) {
                        // Cutting any earlier would give up pipelining for nothing.
                        assert!(
                            in_run.contains(subjects[following.start]),
                            "{subjects:?}: {run:?} was cut without a repeat"
                        );
                    }
                    next = run.end;
                }
                assert_eq!(next, subjects.len(), "{subjects:?}: not covered to the end");
            }
        }
    }
}
