//! [`ClusterOptions`]: how the journal on JetStream is reached and laid out.

use std::time::Duration;

/// The partition count of a cluster created without `--partitions`.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// The name prefix of everything the journal keeps in NATS (streams, buckets).
pub const DEFAULT_PREFIX: &str = "SECKILL";

/// How the journal on JetStream is reached and laid out.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The NATS servers (`nats://HOST:PORT`); the client moves between them.
    pub urls: Vec<String>,
    /// This node's name (`--node-id`): the holder named in its leases.
    pub node_id: String,
    /// The partition count (`--partitions`). Fixed when the cluster is first created and
    /// stored in NATS; another value at a later start is refused. `None`: the stored value,
    /// or [`DEFAULT_PARTITIONS`] for a new cluster.
    pub partitions: Option<u32>,
    /// Copies of every stream and bucket (`--replicas`): an append is acknowledged once a
    /// quorum of them has it.
    pub replicas: usize,
    /// The prefix of every stream and bucket name: several deployments (and tests) can share
    /// one NATS cluster under different prefixes. Upper-case letters, digits and `_`.
    pub prefix: String,
    /// A lease lapses this long after its last renewal; a node that dies loses its
    /// partitions after about this long.
    pub lease_ttl: Duration,
    /// How long `open` waits for partitions that another node holds before it gives up with
    /// [`super::ClusterError::LeaseHeld`]. `None`: for as long as it takes (a standby).
    pub lease_wait: Option<Duration>,
    /// How long an append waits for JetStream before its batch's callers hear "outcome
    /// unknown". The append goes on in the background (same message id) until it lands or
    /// the partition is taken over; meanwhile its shard answers reads and refuses writes.
    pub append_patience: Duration,
    /// How long `open` tries to reach NATS before it gives up.
    pub connect_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            urls: vec!["nats://127.0.0.1:4222".into()],
            node_id: "node-1".into(),
            partitions: None,
            replicas: 3,
            prefix: DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(6),
            lease_wait: None,
            append_patience: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
