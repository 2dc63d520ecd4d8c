//! Servers the runner starts itself: `seckill serve` or the baseline, on a free port, in a
//! temporary data directory; and, for restart scenarios, killed with SIGKILL and started
//! again on the same directory and port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::client::{Api, Credentials};
use crate::scenario::AuthMode;

/// How long a server may take to answer `/readyz` 200 (a debug build replaying a big log
/// is slow on a shared 2-core machine).
pub const READY_TIMEOUT_S: u64 = 120;
/// How long a server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE_S: u64 = 15;

/// `--durability` of `seckill serve`: the server's own setting, so the runner's flag takes
/// exactly the values the server does.
pub use seckill_http_edge::config::Durability;

/// Which server to start, and how.
#[derive(Debug, Clone)]
pub enum ServerKind {
    Seckill {
        durability: Durability,
    },
    /// A node of a cluster (`--cluster ...` in the extra arguments; no `--durability`,
    /// which a cluster does not take).
    SeckillCluster,
    Baseline {
        redis_url: String,
    },
}

/// Everything needed to start (and restart) a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub binary: PathBuf,
    pub kind: ServerKind,
    pub credentials: Credentials,
    /// Extra arguments appended as is (e.g. `--shards 2`).
    pub extra_args: Vec<String>,
}

impl ServerSpec {
    /// A name for reports: `seckill (durability sync)`.
    pub fn label(&self) -> String {
        match &self.kind {
            ServerKind::Seckill { durability } => {
                format!("seckill (durability {})", durability.as_str())
            }
            ServerKind::SeckillCluster => "seckill (cluster node)".to_owned(),
            ServerKind::Baseline { .. } => "redis+lua baseline".to_owned(),
        }
    }
}

/// A running server owned by the runner.
#[derive(Debug)]
pub struct SpawnedServer {
    spec: ServerSpec,
    child: Option<Child>,
    port: u16,
    /// Holds the data directory and the log; removed on drop unless kept.
    scratch: Option<tempfile::TempDir>,
    scratch_path: PathBuf,
    pub restarts: u32,
}

impl SpawnedServer {
    /// Starts the server and waits until `/readyz` answers 200.
    pub async fn start(spec: ServerSpec) -> Result<SpawnedServer> {
        let scratch = tempfile::Builder::new()
            .prefix("seckill-load-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let scratch_path = scratch.path().to_path_buf();
        std::fs::create_dir_all(scratch_path.join("data")).context("creating data dir")?;
        let port = free_port()?;
        let mut server = SpawnedServer {
            spec,
            child: None,
            port,
            scratch: Some(scratch),
            scratch_path,
            restarts: 0,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.scratch_path.join("data")
    }

    /// The embedded SQLite file `seckill serve` writes orders to by default.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self.spec.kind {
            ServerKind::Seckill { .. } => Some(self.data_dir().join("orders.db")),
            ServerKind::SeckillCluster | ServerKind::Baseline { .. } => None,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.scratch_path.join("server.log")
    }

    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }

    /// The process id of the running server (`None` once stopped or killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Keeps the data directory and log after the run (for a failed run's post-mortem).
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(scratch) = self.scratch.take() {
            let _ = scratch.keep();
        }
        self.scratch_path.clone()
    }

    /// `seckill serve` on `listen` with the run's credentials and data directory.
    fn serve_arguments(&self, listen: String) -> Vec<String> {
        let credentials = &self.spec.credentials;
        vec![
            "serve".into(),
            "--listen".into(),
            listen,
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--admin-key".into(),
            credentials.admin_key.clone(),
            "--auth".into(),
            match credentials.auth {
                AuthMode::Header => "header".into(),
                AuthMode::Jwt => "jwt".into(),
            },
            "--user-secret".into(),
            credentials.user_secret.clone(),
        ]
    }

    fn arguments(&self) -> Vec<String> {
        let listen = format!("127.0.0.1:{}", self.port);
        let credentials = &self.spec.credentials;
        let mut args: Vec<String> = match &self.spec.kind {
            ServerKind::SeckillCluster => self.serve_arguments(listen),
            ServerKind::Seckill { durability } => {
                let mut args = self.serve_arguments(listen);
                args.extend(["--durability".into(), durability.as_str().into()]);
                args
            }
            ServerKind::Baseline { redis_url } => vec![
                "--listen".into(),
                listen,
                "--admin-key".into(),
                credentials.admin_key.clone(),
                "--redis-url".into(),
                redis_url.clone(),
            ],
        };
        // `{port}` in an extra argument is this server's port (a cluster node's
        // `--advertise`).
        let port = self.port.to_string();
        args.extend(
            self.spec
                .extra_args
                .iter()
                .map(|arg| arg.replace("{port}", &port)),
        );
        args
    }

    async fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the server log")?;
        let log_err = log.try_clone().context("cloning the log handle")?;
        let child = Command::new(&self.spec.binary)
            .args(self.arguments())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.binary.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let api = Api::new(&self.url(), self.spec.credentials.clone(), 1);
        let deadline = Instant::now() + Duration::from_secs(READY_TIMEOUT_S);
        loop {
            if api.is_ready().await {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling the server")? {
                    bail!(
                        "{} exited ({status}) before it was ready; log {}:\n{}",
                        self.spec.binary.display(),
                        self.log_path().display(),
                        log_tail(&self.log_path())
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT_S} s; log {}:\n{}",
                    self.spec.binary.display(),
                    self.log_path().display(),
                    log_tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no flush, no goodbye; what was acknowledged must survive.
    pub async fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("SIGKILL")?;
        }
        Ok(())
    }

    /// Starts the server again on the same data directory and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.restarts += 1;
        self.launch().await
    }

    /// SIGTERM, then SIGKILL after a grace period; returns the exit status text.
    pub async fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("not running".into());
        };
        if let Some(pid) = child.id() {
            // `kill` the command: sending a signal from Rust needs unsafe or another crate.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(STOP_GRACE_S), child.wait()).await {
            Ok(status) => Ok(status.context("waiting for the server")?.to_string()),
            Err(_) => {
                child.kill().await.context("SIGKILL after grace")?;
                Ok(format!("killed after {STOP_GRACE_S} s grace"))
            }
        }
    }
}

/// A port nobody listens on now (the kernel picks; tiny race accepted).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

/// The last lines of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
