//! `seckill serve`: reads the settings, refuses bad ones in one line with exit code 2, and
//! runs the server until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;

use seckill_http_edge::config::{first_line, Cli, Command};
use seckill_http_edge::{serve, Config, StartError};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of every refusal to start (bad flag, data directory, database).
const EXIT_REFUSED: u8 = 2;
/// How long the runtime's leftover blocking work may hold up the exit once `serve` is done.
const RUNTIME_STOP_LIMIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            return match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = error.print();
                    ExitCode::SUCCESS
                }
                _ => refuse(&first_line(&error.to_string())),
            };
        }
    };
    let Command::Serve(args) = cli.command;
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => return refuse(&error.to_string()),
    };
    init_tracing();
    if config.admin_key_generated {
        // Shown once: the operator needs it, and it is never written anywhere else.
        println!(
            "seckill: no --admin-key given; generated admin key: {}",
            config.admin_key
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return refuse(&format!("cannot start the async runtime: {error}")),
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        let listener =
            seckill_http_edge::listen::bind(config.listen).map_err(|e| StartError::Listen {
                addr: config.listen.to_string(),
                reason: e.to_string(),
            })?;
        serve(config, listener, shutdown).await
    });
    // A standby told to stop while it waited for its cluster's partitions leaves that open
    // behind on a blocking thread; dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(RUNTIME_STOP_LIMIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Serve(reason)) => {
            eprintln!("seckill: the server failed: {reason}");
            ExitCode::FAILURE
        }
        Err(error) => refuse(&error.to_string()),
    }
}

fn refuse(message: &str) -> ExitCode {
    eprintln!("seckill: {message}");
    ExitCode::from(EXIT_REFUSED)
}

/// Logs to stderr, `info` unless RUST_LOG says otherwise; no line per request at `info`.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed here, before start-up, so a
/// signal that arrives during recovery is held until the server can stop cleanly instead of
/// killing the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    // No signal handling (should not happen on unix): Ctrl-C alone.
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
