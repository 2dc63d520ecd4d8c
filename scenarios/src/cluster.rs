//! `seckill-load cluster`: a sale on a cluster of seckill nodes it starts (loopback ports,
//! the NATS servers and the PostgreSQL it is given), its connections spread over the nodes
//! as a round-robin balancer would, and optionally `kill -9` of one node mid-sale. Reports
//! the throughput per node and in total, and for the fault the gap: from the kill to the
//! first successful write on every item that was refused meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::{Method, StatusCode};
use serde_json::json;

use crate::client::{Api, Credentials};
use crate::server::{ServerKind, ServerSpec, SpawnedServer};

/// How a cluster run goes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub binary: PathBuf,
    pub credentials: Credentials,
    pub nodes: usize,
    pub nats_urls: String,
    pub database_url: String,
    pub partitions: u32,
    pub lease_ttl_s: u64,
    pub connections: usize,
    pub duration: Duration,
    /// `kill -9` of the last node this long into the sale; `None`: no fault.
    pub kill_at: Option<Duration>,
    pub items: usize,
}

/// What one node saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFigures {
    pub requests: u64,
    pub created: u64,
    /// Answers by status, refusals included.
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
}

/// The run's outcome.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    pub elapsed: Duration,
    pub per_node: Vec<NodeFigures>,
    /// From the kill to the first sale of the slowest item refused after it.
    pub gap: Option<Duration>,
    /// Items refused (503) at some point after the kill.
    pub items_affected: usize,
}

impl ClusterReport {
    pub fn print(&self) {
        let seconds = self.elapsed.as_secs_f64().max(f64::EPSILON);
        let mut total = 0u64;
        for (index, node) in self.per_node.iter().enumerate() {
            total += node.created;
            println!(
                "node {index}: {} requests, {} orders ({:.0}/s), answers {:?}, transport errors {}",
                node.requests,
                node.created,
                node.created as f64 / seconds,
                node.statuses,
                node.transport_errors
            );
        }
        println!(
            "total: {total} orders in {:.1} s ({:.0}/s)",
            seconds,
            total as f64 / seconds
        );
        match self.gap {
            Some(gap) => println!(
                "fault (kill -9 of the last node): {} items refused meanwhile, all sold again {:.2} s after the kill",
                self.items_affected,
                gap.as_secs_f64()
            ),
            None => println!("no fault, or no item refused after it"),
        }
    }
}

/// When each item was refused after the kill, and first sold after it.
#[derive(Debug, Default)]
struct FaultLog {
    refused_after: BTreeMap<usize, ()>,
    sold_again: BTreeMap<usize, Instant>,
}

/// Starts the nodes, runs the sale, stops the nodes.
pub async fn run_cluster(options: &ClusterOptions) -> Result<ClusterReport> {
    if options.nodes < 2 {
        bail!("a cluster run needs at least 2 nodes");
    }
    let prefix = format!("LOAD{:012X}", rand::random::<u64>() & 0xFFFF_FFFF_FFFF);
    let mut servers = Vec::with_capacity(options.nodes);
    for index in 0..options.nodes {
        servers.push(start_node(options, &prefix, index).await?);
    }
    let apis: Vec<Arc<Api>> = servers
        .iter()
        .map(|s| {
            Arc::new(Api::new(
                &s.url(),
                options.credentials.clone(),
                options.connections,
            ))
        })
        .collect();
    create_sale(&apis[0], options.items).await?;
    let report = sale(options, &apis, &mut servers).await;
    for server in &mut servers {
        let _ = server.stop().await;
    }
    report
}

async fn start_node(options: &ClusterOptions, prefix: &str, index: usize) -> Result<SpawnedServer> {
    let extra_args = vec![
        "--cluster".into(),
        options.nats_urls.clone(),
        "--cluster-prefix".into(),
        prefix.into(),
        "--node-id".into(),
        format!("load-{index}"),
        "--advertise".into(),
        "http://127.0.0.1:{port}".into(),
        "--partitions".into(),
        options.partitions.to_string(),
        "--lease-ttl-s".into(),
        options.lease_ttl_s.to_string(),
        "--database-url".into(),
        options.database_url.clone(),
    ];
    let spec = ServerSpec {
        binary: options.binary.clone(),
        kind: ServerKind::SeckillCluster,
        credentials: options.credentials.clone(),
        extra_args,
    };
    SpawnedServer::start(spec)
        .await
        .with_context(|| format!("starting cluster node {index}"))
}

fn sku(index: usize) -> String {
    format!("c{index}")
}

async fn create_sale(api: &Api, items: usize) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let at = |offset_s: i64| {
        (now + time::Duration::seconds(offset_s))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let items: Vec<_> = (0..items)
        .map(|i| json!({"sku": sku(i), "stock": 10_000_000, "price_cents": 100, "per_user_limit": 1}))
        .collect();
    let body = json!({
        "id": "cluster-load",
        "name": "cluster load",
        "starts_at": at(-60),
        "ends_at": at(3600),
        "require_token": false,
        "items": items,
    });
    let reply = api
        .admin(Method::POST, "/admin/promotions", Some(&body))
        .await
        .map_err(|e| anyhow::anyhow!("creating the promotion: {e}"))?;
    if reply.status != StatusCode::CREATED {
        bail!("creating the promotion answered {}", reply.status);
    }
    Ok(())
}

/// The sale: `connections` buyers, buyer `i` on node `i % nodes` (moving to the next node
/// when its own is killed, as a balancer takes a dead node out), for `duration`.
async fn sale(
    options: &ClusterOptions,
    apis: &[Arc<Api>],
    servers: &mut [SpawnedServer],
) -> Result<ClusterReport> {
    let started = Instant::now();
    let figures: Arc<Mutex<Vec<NodeFigures>>> =
        Arc::new(Mutex::new(vec![NodeFigures::default(); apis.len()]));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let faults = Arc::new(Mutex::new(FaultLog::default()));
    let dead = apis.len() - 1;
    let mut buyers = Vec::with_capacity(options.connections);
    for buyer in 0..options.connections {
        let apis = apis.to_vec();
        let (figures, killed_at, faults) = (
            Arc::clone(&figures),
            Arc::clone(&killed_at),
            Arc::clone(&faults),
        );
        let (duration, items) = (options.duration, options.items);
        buyers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while started.elapsed() < duration {
                let killed = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
                let mut node = buyer % apis.len();
                if killed.is_some() && node == dead {
                    node = (node + 1) % apis.len();
                }
                let item = (buyer + n * 7) % items;
                let user = format!("b{buyer}-{n}");
                let path = format!("/promotions/cluster-load/items/{}/purchase", sku(item));
                let body = json!({"request_id": format!("{user}-r")});
                let credential = apis[node].shopper_header(&user);
                let answer = apis[node]
                    .shopper(Method::POST, &path, &credential, Some(&body))
                    .await;
                let mut all = figures.lock().unwrap_or_else(|p| p.into_inner());
                let slot = &mut all[node];
                slot.requests += 1;
                match answer {
                    Ok(reply) => {
                        *slot.statuses.entry(reply.status.as_u16()).or_default() += 1;
                        if reply.status == StatusCode::CREATED {
                            slot.created += 1;
                        }
                        if killed.is_some() {
                            note_fault(&faults, item, reply.status);
                        }
                    }
                    Err(_) => slot.transport_errors += 1,
                }
                drop(all);
                n += 1;
            }
        }));
    }
    if let Some(kill_at) = options.kill_at {
        tokio::time::sleep(kill_at).await;
        servers[dead].kill9().await?;
        *killed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        println!(
            "kill -9 of node {dead} at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    for buyer in buyers {
        let _ = buyer.await;
    }
    let elapsed = started.elapsed();
    let per_node = figures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let killed = *killed_at.lock().unwrap_or_else(|p| p.into_inner());
    let faults = faults.lock().unwrap_or_else(|p| p.into_inner());
    let gap = killed.and_then(|at| {
        faults
            .refused_after
            .keys()
            .map(|item| faults.sold_again.get(item).map(|sold| *sold - at))
            .collect::<Option<Vec<Duration>>>()
            .and_then(|gaps| gaps.into_iter().max())
    });
    Ok(ClusterReport {
        elapsed,
        per_node,
        gap,
        items_affected: faults.refused_after.len(),
    })
}

/// After the kill: a 503 marks `item` affected; its first sale after a refusal ends its gap.
fn note_fault(faults: &Mutex<FaultLog>, item: usize, status: StatusCode) {
    let mut log = faults.lock().unwrap_or_else(|p| p.into_inner());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        log.refused_after.insert(item, ());
        log.sold_again.remove(&item);
    } else if status == StatusCode::CREATED && log.refused_after.contains_key(&item) {
        log.sold_again.entry(item).or_insert_with(Instant::now);
    }
}
