//! `.ci/nats-cluster` for the tests that start a three-server NATS cluster of their own
//! (so that killing servers disturbs no other test): each on its own base port. Shared by
//! `persistence/tests/jetstream_faults.rs` and `http-edge/tests/cluster_faults.rs` (which
//! includes this file by path).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

/// The script; both crates sit beside `.ci`.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/nats-cluster");

/// Runs `.ci/nats-cluster <action> [dir]` on the ports from `base_port`; its stdout.
pub fn script(base_port: u16, action: &str, dir: Option<&Path>) -> String {
    let mut command = Command::new(SCRIPT);
    command
        .arg(action)
        .env("SECKILL_NATS_BASE_PORT", base_port.to_string())
        .stderr(Stdio::inherit());
    if let Some(dir) = dir {
        command.arg(dir);
    }
    let output = command.output().expect("run .ci/nats-cluster");
    assert!(
        output.status.success(),
        ".ci/nats-cluster {action} failed: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Stops the servers started in `dir` (by their pids), quietly: for a guard's `Drop`.
pub fn stop_quietly(base_port: u16, dir: &Path) {
    let _ = Command::new(SCRIPT)
        .arg("stop")
        .arg(dir)
        .env("SECKILL_NATS_BASE_PORT", base_port.to_string())
        .stdout(Stdio::null())
        .status();
}

/// A cluster of an earlier run that was not stopped would answer on these ports, and the
/// test would talk to it instead of its own.
pub fn assert_ports_free(base_port: u16) {
    for offset in [0u16, 1, 2, 10, 11, 12, 20, 21, 22] {
        let port = base_port + offset;
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is in use: a NATS cluster of an earlier run of this test may still be up (look for nats-server on ports {base_port}-{})",
            base_port + 22
        );
    }
}
