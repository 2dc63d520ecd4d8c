//! The runner, the checker and the baseline together: a small flash-100 against the Redis +
//! Lua server must sell exactly the stock and pass every check. Needs Redis.

use std::path::Path;

use seckill_baseline::{app, delete_promotion_keys, AppState};
use seckill_scenarios::client::{Api, Credentials};
use seckill_scenarios::run::{run_scenario, RunOptions, Target};
use seckill_scenarios::scenario::{AuthMode, Scenario};

fn redis_url() -> Option<String> {
    let url = std::env::var("SECKILL_TEST_REDIS_URL").ok();
    if url.is_none() {
        println!("skipped: SECKILL_TEST_REDIS_URL unset");
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_100_against_the_baseline_sells_the_stock_once_and_passes_every_check() {
    let Some(url) = redis_url() else { return };
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis reachable");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = app(AppState::new(redis.clone(), "test-admin"));
    tokio::spawn(async move { axum::serve(listener, server).await });

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/flash-100.toml");
    let scenario = Scenario::load(&path).expect("scenario").scaled(0.005);
    let credentials = Credentials {
        admin_key: "test-admin".into(),
        auth: AuthMode::Header,
        user_secret: String::new(),
    };
    let mut target = Target {
        api: Api::new(&format!("http://{address}"), credentials, 64),
        server: None,
        label: "baseline".into(),
        sqlite_path: None,
    };
    let options = RunOptions {
        scale: 0.005,
        progress: false,
        quiet: true,
    };
    let report = run_scenario(&scenario, &mut target, &options)
        .await
        .expect("the run happens");
    let _ = delete_promotion_keys(&mut redis, &report.promotion_id).await;
    assert!(report.passed, "{}", report.to_text());
    assert_eq!(report.measurements.orders_accepted, 100);
    let refused = report.measurements.refusals.get("sold_out").copied();
    assert!(refused.unwrap_or(0) > 0, "{}", report.to_text());
}
