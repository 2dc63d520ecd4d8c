//! The frames of the link between nodes (cluster plan, Q4 and step 8): a node hands writes
//! and order reads for items of partitions it does not own to their owner, many calls to a
//! frame, and the owner answers many answers to a frame.
//!
//! Encoded with postcard (compact, no field names, and no self-describing formats needed:
//! every type here is plain data). A frame starts with [`WIRE_VERSION`]; a node refuses a
//! frame of another version whole (it answers nothing, so the sender's calls time out),
//! which a rolling upgrade must keep in mind: bump it only with a way to speak both.

use seckill_engine::{
    ClaimValue, Error, Order, PartitionView, PromotionStats, PurchaseRequest, Purchased, TokenGrant,
};
use serde::{Deserialize, Serialize};

/// The version every frame carries.
pub const WIRE_VERSION: u8 = 3;

/// Calls from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub version: u8,
    /// The sending node's id (for the owner's logs and metrics).
    pub from: String,
    /// Where the answers go: the sender's reply subject.
    pub reply_to: String,
    /// The sender's catalog position when it sent: the owner catches up to it first, so a
    /// call about a promotion just created on the sender finds it.
    pub catalog_seq: u64,
    pub calls: Vec<Call>,
}

/// One call, numbered by its sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: u64,
    pub op: Op,
}

/// The claim a promotion's eligibility rule reads, as the sending node read it from the
/// shopper's credential (`None`: no rule, or no such claim).
pub type Claim = Option<(String, ClaimValue)>;

/// What the owner is asked to do: the engine call of the same name. A guarded promotion's
/// facts come with it: the sending node verified the shopper's credential and the human
/// check (the owner decides eligibility from the claim, as its own gate would).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Token {
        promotion_id: String,
        sku: String,
        user_id: String,
        claim: Claim,
        human_check_passed: bool,
    },
    Purchase {
        promotion_id: String,
        sku: String,
        user_id: String,
        request: PurchaseRequest,
        claim: Claim,
    },
    ReadOrder {
        order_id: String,
        user_id: Option<String>,
    },
    Cancel {
        order_id: String,
        user_id: Option<String>,
    },
    Pay {
        order_id: String,
        payment_ref: String,
        amount_cents: Option<i64>,
    },
    /// The promotion with the exact stats of the items the asked node owns, no others.
    StatsOwned { promotion_id: String },
}

impl Op {
    /// Whether the call may change state: an unanswered write's outcome is unknown, an
    /// unanswered read changed nothing.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::ReadOrder { .. } | Op::StatsOwned { .. })
    }
}

/// Answers from an owner, each naming its call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerFrame {
    pub version: u8,
    pub answers: Vec<(u64, Answer)>,
}

/// The engine's answer, as the owner gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Token(TokenGrant),
    Purchased(Purchased),
    Order(Order),
    Stats(PromotionStats),
    /// The engine refused (`NotOwner` among them: the partition moved before the call was
    /// decided, nothing was done).
    Refused(Error),
}

/// An owner's figures for one of its partitions, for the other nodes' views (cluster
/// plan, Q3; `views.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewFrame {
    pub version: u8,
    /// The owner's node id: a node skips its own frames.
    pub from: String,
    /// The node is handing its partitions over (SIGTERM) and publishes no more views:
    /// the others stop taking it for live on its views' account at once.
    pub leaving: bool,
    pub view: Option<PartitionView>,
}

pub fn encode_view(frame: &ViewFrame) -> Vec<u8> {
    postcard::to_stdvec(frame).unwrap_or_default()
}

pub fn decode_view(bytes: &[u8]) -> Result<ViewFrame, WireError> {
    check_version(bytes)?;
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// A frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a frame of wire version {found}; this node speaks {WIRE_VERSION}")]
    Version { found: u8 },
    #[error("an undecodable frame: {0}")]
    Decode(String),
}

pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    // Plain data always encodes.
    postcard::to_stdvec(frame).unwrap_or_default()
}

pub fn encode_answers(frame: &AnswerFrame) -> Vec<u8> {
    postcard::to_stdvec(frame).unwrap_or_default()
}

pub fn decode_frame(bytes: &[u8]) -> Result<Frame, WireError> {
    check_version(bytes)?;
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

pub fn decode_answers(bytes: &[u8]) -> Result<AnswerFrame, WireError> {
    check_version(bytes)?;
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// The version is the first field, and a `u8` is one byte in postcard: checked before the
/// rest is decoded, so a frame of another layout is told apart from a corrupt one.
fn check_version(bytes: &[u8]) -> Result<(), WireError> {
    match bytes.first() {
        Some(&WIRE_VERSION) => Ok(()),
        Some(&found) => Err(WireError::Version { found }),
        None => Err(WireError::Decode("an empty frame".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(id: u64) -> Call {
        Call {
            id,
            op: Op::Purchase {
                promotion_id: "p".into(),
                sku: "s".into(),
                user_id: "u".into(),
                request: PurchaseRequest {
                    request_id: format!("r{id}"),
                    quantity: 1,
                    token: None,
                },
                claim: Some(("level".into(), ClaimValue::Number(3.0))),
            },
        }
    }

    #[test]
    fn frames_read_back_as_written() {
        let frame = Frame {
            version: WIRE_VERSION,
            from: "a".into(),
            reply_to: "X.rpcr.a.1".into(),
            catalog_seq: 7,
            calls: vec![purchase(1), purchase(2)],
        };
        assert_eq!(decode_frame(&encode_frame(&frame)), Ok(frame));
        let answers = AnswerFrame {
            version: WIRE_VERSION,
            answers: vec![
                (1, Answer::Refused(Error::SoldOut)),
                (2, Answer::Refused(Error::Unavailable("x".into()))),
            ],
        };
        assert_eq!(decode_answers(&encode_answers(&answers)), Ok(answers));
    }

    #[test]
    fn another_version_or_garbage_is_refused_not_misread() {
        let mut bytes = encode_frame(&Frame {
            version: WIRE_VERSION,
            from: "a".into(),
            reply_to: "r".into(),
            catalog_seq: 0,
            calls: vec![purchase(1)],
        });
        bytes[0] = WIRE_VERSION + 1;
        assert_eq!(
            decode_frame(&bytes),
            Err(WireError::Version {
                found: WIRE_VERSION + 1
            })
        );
        assert!(matches!(decode_frame(&[]), Err(WireError::Decode(_))));
        assert!(matches!(
            decode_answers(&[WIRE_VERSION, 0xff, 0xff]),
            Err(WireError::Decode(_))
        ));
    }
}
