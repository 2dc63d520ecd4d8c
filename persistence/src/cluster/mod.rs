//! The cluster of seckill nodes (issue 13, `docs/cluster-plan.md`), built step by step.
//!
//! - `assign`: the pure partition-assignment planner: each live node's quota, and what one
//!   node should take or release next (advice; the leases decide).

pub mod assign;
