//! Shared set-up of the SQL flusher tests: a database of each kind (SQLite always, PostgreSQL
//! when `SECKILL_TEST_DATABASE_URL` is set, in a schema of its own so tests run in
//! parallel), an outage switch for each, a sale that leaves orders in every status, and
//! readers that bring the tables back as plain values to compare with the engine.

#![allow(dead_code)]

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use seckill_engine::{
    Engine, EngineConfig, ItemSpec, ManualClock, MemoryJournal, NullSink, Order, Ports,
    PromotionSpec, PurchaseRequest, Recovery,
};
use seckill_persistence::journal::{JournalOptions, RocksJournal};
use seckill_persistence::sql::{
    ms_from_rfc3339, order_updated_at_ms, Flusher, FlusherHandle, FlusherOptions, SqlError,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

pub const PAYMENT_TIMEOUT_S: u32 = 60;
pub const START_MS: i64 = 1_762_819_200_000;

/// The PostgreSQL URL from the environment, or `None` after printing the skip line.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("SECKILL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            println!("{test} on PostgreSQL skipped: SECKILL_TEST_DATABASE_URL unset");
            None
        }
    }
}

static SCHEMA_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A database for one test.
pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
        /// A connection holding SQLite's write lock while an outage lasts.
        locker: Option<SqliteConnection>,
    },
    Postgres {
        admin: PgPool,
        schema: String,
        /// Straight to the server, in the test's schema: for the test's own reads.
        direct_url: String,
        /// Through the proxy, in the test's schema: for the flusher.
        proxied_url: String,
        proxy: Proxy,
    },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = seckill_persistence::sql::default_database_url(dir.path());
        TestDb::Sqlite {
            _dir: dir,
            url,
            locker: None,
        }
    }

    pub async fn postgres(base_url: &str) -> TestDb {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(base_url)
            .await
            .expect("PostgreSQL from SECKILL_TEST_DATABASE_URL reachable");
        let schema = format!(
            "seckill_test_{}_{}_{}",
            std::process::id(),
            SCHEMA_COUNTER.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("create schema");
        let in_schema = |url: &str| {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}options=-c%20search_path%3D{schema}")
        };
        let options = PgConnectOptions::from_str(base_url).expect("valid url");
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let proxy = Proxy::start(upstream).await;
        let proxied = with_host_port(base_url, &format!("127.0.0.1:{}", proxy.port));
        TestDb::Postgres {
            direct_url: in_schema(base_url),
            proxied_url: in_schema(&proxied),
            admin,
            schema,
            proxy,
        }
    }

    /// The URL the flusher is given.
    pub fn flusher_url(&self) -> String {
        match self {
            TestDb::Sqlite { url, .. } => url.clone(),
            TestDb::Postgres { proxied_url, .. } => proxied_url.clone(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// Makes the database unusable for the flusher: SQLite's write lock is taken by another
    /// connection; PostgreSQL's proxy closes its port and every connection through it.
    pub async fn begin_outage(&mut self) {
        match self {
            TestDb::Sqlite { url, locker, .. } => {
                let options = SqliteConnectOptions::from_str(url).expect("valid url");
                let mut connection = SqliteConnection::connect_with(&options)
                    .await
                    .expect("second connection");
                sqlx::raw_sql("BEGIN EXCLUSIVE")
                    .execute(&mut connection)
                    .await
                    .expect("take the write lock");
                *locker = Some(connection);
            }
            TestDb::Postgres { proxy, .. } => proxy.close(),
        }
    }

    pub async fn end_outage(&mut self) {
        match self {
            TestDb::Sqlite { locker, .. } => {
                if let Some(mut connection) = locker.take() {
                    sqlx::raw_sql("ROLLBACK")
                        .execute(&mut connection)
                        .await
                        .expect("release the write lock");
                    connection.close().await.expect("close");
                }
            }
            TestDb::Postgres { proxy, .. } => proxy.open().await,
        }
    }

    pub async fn cleanup(self) {
        if let TestDb::Postgres { admin, schema, .. } = self {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .expect("drop schema");
            admin.close().await;
        }
    }

    /// Runs a statement with the test's own connection.
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                sqlx::raw_sql(sql).execute(&mut c).await.expect("statement");
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("statement");
            }
        }
    }

    /// Every row of `orders`, sorted by order id, with times as unix ms.
    pub async fn orders(&self) -> Vec<OrderRow> {
        let sql = "SELECT order_id, promotion_id, sku, user_id, quantity, price_cents, \
                   amount_cents, status, created_at, pay_before, paid_at, payment_ref, \
                   closed_at, updated_at FROM orders ORDER BY order_id";
        let mut rows = Vec::new();
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                let time = |row: &sqlx::sqlite::SqliteRow, column: &str| -> Option<i64> {
                    let text: Option<String> = row.get(column);
                    text.map(|t| ms_from_rfc3339(&t).expect("RFC 3339 text"))
                };
                for row in sqlx::query(sql).fetch_all(&mut c).await.expect("orders") {
                    rows.push(OrderRow {
                        order_id: row.get("order_id"),
                        promotion_id: row.get("promotion_id"),
                        sku: row.get("sku"),
                        user_id: row.get("user_id"),
                        quantity: row.get::<i64, _>("quantity"),
                        price_cents: row.get("price_cents"),
                        amount_cents: row.get("amount_cents"),
                        status: row.get("status"),
                        created_at_ms: time(&row, "created_at").expect("created_at"),
                        pay_before_ms: time(&row, "pay_before").expect("pay_before"),
                        paid_at_ms: time(&row, "paid_at"),
                        payment_ref: row.get("payment_ref"),
                        closed_at_ms: time(&row, "closed_at"),
                        updated_at_ms: time(&row, "updated_at").expect("updated_at"),
                    });
                }
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                let time = |row: &sqlx::postgres::PgRow, column: &str| -> Option<i64> {
                    let t: Option<DateTime<Utc>> = row.get(column);
                    t.map(|t| t.timestamp_millis())
                };
                for row in sqlx::query(sql).fetch_all(&mut c).await.expect("orders") {
                    rows.push(OrderRow {
                        order_id: row.get("order_id"),
                        promotion_id: row.get("promotion_id"),
                        sku: row.get("sku"),
                        user_id: row.get("user_id"),
                        quantity: i64::from(row.get::<i32, _>("quantity")),
                        price_cents: row.get("price_cents"),
                        amount_cents: row.get("amount_cents"),
                        status: row.get("status"),
                        created_at_ms: time(&row, "created_at").expect("created_at"),
                        pay_before_ms: time(&row, "pay_before").expect("pay_before"),
                        paid_at_ms: time(&row, "paid_at"),
                        payment_ref: row.get("payment_ref"),
                        closed_at_ms: time(&row, "closed_at"),
                        updated_at_ms: time(&row, "updated_at").expect("updated_at"),
                    });
                }
            }
        }
        rows
    }

    /// Every row of `promotion_items` as (promotion, sku, stock, remaining, reserved, sold,
    /// tokens issued, tokens outstanding), sorted.
    pub async fn items(&self) -> Vec<ItemRow> {
        let sql = "SELECT promotion_id, sku, stock, remaining, reserved, sold, tokens_issued, \
                   tokens_outstanding FROM promotion_items ORDER BY promotion_id, sku";
        let read = |row: &dyn RowLike| ItemRow {
            promotion_id: row.text("promotion_id"),
            sku: row.text("sku"),
            stock: row.int("stock"),
            remaining: row.int("remaining"),
            reserved: row.int("reserved"),
            sold: row.int("sold"),
            tokens_issued: row.int("tokens_issued"),
            tokens_outstanding: row.int("tokens_outstanding"),
        };
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                let rows = sqlx::query(sql).fetch_all(&mut c).await.expect("items");
                rows.iter().map(|r| read(r)).collect()
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                let rows = sqlx::query(sql).fetch_all(&mut c).await.expect("items");
                rows.iter().map(|r| read(r)).collect()
            }
        }
    }

    pub async fn cursor(&self) -> i64 {
        let sql = "SELECT seq FROM flusher_cursor WHERE id = 1";
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                sqlx::query_scalar(sql)
                    .fetch_one(&mut c)
                    .await
                    .expect("cursor")
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut c)
                    .await
                    .expect("cursor")
            }
        }
    }
}

impl TestDb {
    /// Every row of `flusher_lane_cursor` (the cursors of lanes above 0) as (lane, seq),
    /// sorted by lane.
    pub async fn lane_cursors(&self) -> Vec<(i64, i64)> {
        // The cast: `lane` is an INTEGER, int4 on PostgreSQL.
        let sql = "SELECT CAST(lane AS BIGINT), seq FROM flusher_lane_cursor ORDER BY lane";
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                sqlx::query_as(sql)
                    .fetch_all(&mut c)
                    .await
                    .expect("lane cursors")
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                sqlx::query_as(sql)
                    .fetch_all(&mut c)
                    .await
                    .expect("lane cursors")
            }
        }
    }

    /// The deployment recorded beside the tables, if any.
    pub async fn deployment_id(&self) -> Option<String> {
        let sql = "SELECT deployment_id FROM seckill_deployment WHERE id = 1";
        match self {
            TestDb::Sqlite { url, .. } => {
                let mut c = sqlite_connection(url).await;
                sqlx::query_scalar(sql)
                    .fetch_optional(&mut c)
                    .await
                    .expect("deployment")
            }
            TestDb::Postgres { direct_url, .. } => {
                let mut c = sqlx::PgConnection::connect(direct_url)
                    .await
                    .expect("connect");
                sqlx::query_scalar(sql)
                    .fetch_optional(&mut c)
                    .await
                    .expect("deployment")
            }
        }
    }
}

pub trait RowLike {
    fn text(&self, column: &str) -> String;
    fn int(&self, column: &str) -> i64;
}

impl RowLike for sqlx::sqlite::SqliteRow {
    fn text(&self, column: &str) -> String {
        self.get(column)
    }
    fn int(&self, column: &str) -> i64 {
        self.get(column)
    }
}

impl RowLike for sqlx::postgres::PgRow {
    fn text(&self, column: &str) -> String {
        self.get(column)
    }
    fn int(&self, column: &str) -> i64 {
        self.get(column)
    }
}

async fn sqlite_connection(url: &str) -> SqliteConnection {
    let options = SqliteConnectOptions::from_str(url).expect("valid url");
    SqliteConnection::connect_with(&options)
        .await
        .expect("sqlite connection")
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `url` with its `host:port` replaced.
fn with_host_port(url: &str, host_port: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("url with a scheme");
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let user = match authority.rsplit_once('@') {
        Some((user, _)) => format!("{user}@"),
        None => String::new(),
    };
    format!("{scheme}://{user}{host_port}{tail}")
}

/// One row of `orders`, times in unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub order_id: String,
    pub promotion_id: String,
    pub sku: String,
    pub user_id: String,
    pub quantity: i64,
    pub price_cents: i64,
    pub amount_cents: i64,
    pub status: String,
    pub created_at_ms: i64,
    pub pay_before_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub payment_ref: Option<String>,
    pub closed_at_ms: Option<i64>,
    pub updated_at_ms: i64,
}

impl OrderRow {
    /// The row the table must hold for `order`.
    pub fn of(order: &Order) -> OrderRow {
        OrderRow {
            order_id: order.order_id.clone(),
            promotion_id: order.promotion_id.clone(),
            sku: order.sku.clone(),
            user_id: order.user_id.clone(),
            quantity: i64::from(order.quantity),
            price_cents: order.price_cents,
            amount_cents: order.amount_cents,
            status: order.status.as_str().to_owned(),
            created_at_ms: order.created_at_ms,
            pay_before_ms: order.pay_before_ms,
            paid_at_ms: order.paid_at_ms,
            payment_ref: order.payment_ref.clone(),
            closed_at_ms: order.closed_at_ms,
            updated_at_ms: order_updated_at_ms(order),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub promotion_id: String,
    pub sku: String,
    pub stock: i64,
    pub remaining: i64,
    pub reserved: i64,
    pub sold: i64,
    pub tokens_issued: i64,
    pub tokens_outstanding: i64,
}

/// A TCP proxy in front of PostgreSQL that the test can close (port and every connection)
/// and open again on the same port: a database that goes away and comes back.
pub struct Proxy {
    pub port: u16,
    upstream: String,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut proxy = Proxy {
            port,
            upstream,
            tasks: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // The connections live in this task's own set: aborting it drops them all.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    pub fn close(&mut self) {
        // Dropping the set aborts the accept loop, which drops every proxied connection.
        self.tasks = None;
    }

    pub async fn open(&mut self) {
        let address = format!("127.0.0.1:{}", self.port).parse().expect("address");
        // The port was just closed; allow reuse while its old sockets time out.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(address).expect("bind the proxy port again");
        let listener = socket.listen(128).expect("listen");
        self.serve(listener);
    }
}

/// The test options: short pauses so a test runs quickly.
/// SQLite always, and PostgreSQL when `SECKILL_TEST_DATABASE_URL` is set.
pub async fn databases(test: &str) -> Vec<TestDb> {
    let mut all = vec![TestDb::sqlite()];
    if let Some(url) = postgres_url(test) {
        all.push(TestDb::postgres(&url).await);
    }
    all
}

/// The engine of these tests: two shards, no snapshot thread.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        shards: 2,
        snapshot_every_events: 0,
        ..EngineConfig::default()
    }
}

/// An engine journaled in RocksDB in `data_dir`.
pub fn start_on_rocks(
    data_dir: &std::path::Path,
    clock: Arc<ManualClock>,
) -> (Engine, Arc<RocksJournal>) {
    let options = JournalOptions {
        data_dir: data_dir.to_path_buf(),
        ..JournalOptions::default()
    };
    let (journal, recovery) = RocksJournal::open(&options).expect("journal opens");
    let ports = Ports {
        journal: journal.clone(),
        clock,
        sink: Arc::new(NullSink),
    };
    let engine = Engine::start(engine_config(), ports, recovery).expect("engine starts");
    (engine, journal)
}

pub fn options(url: String) -> FlusherOptions {
    FlusherOptions {
        database_url: url,
        poll_interval: Duration::from_millis(10),
        stats_interval: Duration::from_millis(200),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(20),
        transaction_events_max: 2_000,
        ..FlusherOptions::default()
    }
}

/// An engine on a memory journal and a manual clock.
pub struct TestEngine {
    pub engine: Engine,
    pub journal: Arc<MemoryJournal>,
    pub clock: Arc<ManualClock>,
}

impl TestEngine {
    pub fn start(journal: Arc<MemoryJournal>, clock: Arc<ManualClock>) -> TestEngine {
        let recovery = if journal.batches().is_empty() {
            Recovery::empty()
        } else {
            journal.recovery()
        };
        let ports = Ports {
            journal: journal.clone(),
            clock: clock.clone(),
            sink: Arc::new(NullSink),
        };
        let engine = Engine::start(engine_config(), ports, recovery).expect("engine starts");
        TestEngine {
            engine,
            journal,
            clock,
        }
    }

    pub fn fresh() -> TestEngine {
        TestEngine::start(MemoryJournal::new(), ManualClock::new(START_MS))
    }

    /// A flusher from this engine's journal into `db`, with the tests' [`options`].
    pub async fn flusher(&self, db: &TestDb) -> Result<FlusherHandle, SqlError> {
        Flusher::start(
            options(db.flusher_url()),
            self.journal.clone(),
            self.engine.clone(),
        )
        .await
    }
}

pub const PROMOTION_ID: &str = "double11";
pub const SKUS: [&str; 3] = ["phone", "laptop", "watch"];

pub async fn create_promotion(engine: &Engine) {
    engine
        .create_promotion(PromotionSpec {
            guard: Default::default(),
            id: Some(PROMOTION_ID.into()),
            name: "Double 11".into(),
            starts_at_ms: START_MS,
            ends_at_ms: START_MS + 24 * 3_600_000,
            payment_timeout_s: PAYMENT_TIMEOUT_S,
            require_token: false,
            token_multiplier: 5,
            items: SKUS
                .iter()
                .map(|sku| ItemSpec {
                    sku: (*sku).into(),
                    title: None,
                    stock: 1_000_000,
                    price_cents: 1_999,
                    per_user_limit: 1,
                })
                .collect(),
        })
        .await
        .expect("promotion created");
}

/// Sells to users `first..first + count` concurrently, then pays a fifth of the new orders,
/// cancels a fifth and leaves the rest pending. Returns the new order ids.
pub async fn sell(engine: &Engine, first: u64, count: u64) -> Vec<String> {
    let mut ids = Vec::with_capacity(count as usize);
    let users: Vec<u64> = (first..first + count).collect();
    for wave in users.chunks(250) {
        let mut set = JoinSet::new();
        for user in wave {
            let engine = engine.clone();
            let user = *user;
            set.spawn(async move {
                let sku = SKUS[(user % SKUS.len() as u64) as usize];
                let bought = engine
                    .purchase(
                        PROMOTION_ID,
                        sku,
                        &format!("user-{user}"),
                        PurchaseRequest {
                            request_id: format!("r-{user}"),
                            quantity: 1,
                            token: None,
                        },
                    )
                    .await
                    .expect("purchase accepted");
                (user, bought.order.order_id)
            });
        }
        let mut placed = Vec::new();
        while let Some(joined) = set.join_next().await {
            placed.push(joined.expect("purchase task"));
        }
        let mut set = JoinSet::new();
        for (user, order_id) in &placed {
            let engine = engine.clone();
            let (user, order_id) = (*user, order_id.clone());
            set.spawn(async move {
                match user % 5 {
                    0 => {
                        engine
                            .pay(&order_id, &format!("pay-{user}"), None)
                            .await
                            .expect("paid");
                    }
                    1 => {
                        engine
                            .cancel(&order_id, Some(&format!("user-{user}")))
                            .await
                            .expect("cancelled");
                    }
                    _ => {}
                }
            });
        }
        while let Some(joined) = set.join_next().await {
            joined.expect("pay/cancel task");
        }
        ids.extend(placed.into_iter().map(|(_, id)| id));
    }
    ids
}

/// Moves the clock past every pending order's deadline and lets the engine expire them.
pub async fn expire_pending(test: &TestEngine) {
    test.clock
        .advance_ms(i64::from(PAYMENT_TIMEOUT_S) * 1_000 + 1);
    test.engine.tick().await.expect("expiry tick");
}

/// Asserts that the tables equal the engine: `orders` row by row for `order_ids` (and no
/// other row), and `promotion_items` equal to the stats.
pub async fn assert_tables_match(db: &TestDb, engine: &Engine, order_ids: &[String]) {
    let mut expected = Vec::with_capacity(order_ids.len());
    for id in order_ids {
        let order = engine.order(id, None).await.expect("engine has the order");
        expected.push(OrderRow::of(&order));
    }
    expected.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    let actual = db.orders().await;
    assert_eq!(
        actual.len(),
        expected.len(),
        "{}: one row per order",
        db.kind()
    );
    for (a, e) in actual.iter().zip(&expected) {
        assert_eq!(a, e, "{}: row of {}", db.kind(), e.order_id);
    }

    let mut expected_items = Vec::new();
    for promotion in engine.list_promotion_stats().await.expect("stats") {
        for item in promotion.items {
            expected_items.push(ItemRow {
                promotion_id: promotion.id.clone(),
                sku: item.sku,
                stock: item.stock as i64,
                remaining: item.remaining as i64,
                reserved: item.reserved as i64,
                sold: item.sold as i64,
                tokens_issued: item.tokens_issued as i64,
                tokens_outstanding: item.tokens_outstanding as i64,
            });
        }
    }
    expected_items.sort_by(|a, b| (&a.promotion_id, &a.sku).cmp(&(&b.promotion_id, &b.sku)));
    assert_eq!(
        db.items().await,
        expected_items,
        "{}: promotion_items",
        db.kind()
    );
}
