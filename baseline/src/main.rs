//! `seckill-baseline`: the Redis + Lua flash-sale server seckill is compared with.
//!
//! Exit codes: 0 after SIGTERM / Ctrl-C, 2 when it cannot start (bad address, Redis down).

use anyhow::Context;
use clap::Parser;
use seckill_baseline::{app, AppState, REDIS_URL_DEFAULT};

/// The classic flash-sale design: axum in front of a Redis Lua script.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Operator key (`Authorization: Bearer <key>`).
    #[arg(long, env = "SECKILL_ADMIN_KEY")]
    admin_key: String,
    /// The Redis that holds the stock and runs the Lua scripts.
    #[arg(
        long,
        env = "SECKILL_TEST_REDIS_URL",
        default_value = REDIS_URL_DEFAULT
    )]
    redis_url: String,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(error) = serve(args).await {
        eprintln!("seckill-baseline: {error:#}");
        std::process::exit(2);
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let client = redis::Client::open(args.redis_url.as_str()).context("redis url")?;
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", args.redis_url))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "seckill-baseline: listening on {} (redis {})",
        args.listen, args.redis_url
    );
    // seckill's own serving loop (one single-threaded runtime per core), so that the only
    // difference between the two servers is the stock engine behind the routes.
    seckill_http_edge::run(
        listener,
        app(AppState::new(connection, &args.admin_key)),
        shutdown(),
    )
    .await
    .context("serving")?;
    Ok(())
}

async fn shutdown() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
