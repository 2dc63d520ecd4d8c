//! Start-up refusals of the real binary (exit 2, one clear line), and a clean exit 0 on
//! SIGTERM.

mod common;

use std::time::Duration;

use common::process::{free_port, path_arg, run_to_exit, ServerProcess};

const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// The lines seckill itself wrote to stderr for a refusal (tracing lines of other crates,
/// if any, carry a level and are not counted).
fn refusal_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_refused(output: &std::process::Output, needle: &str) {
    let lines = refusal_lines(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got {lines:?}");
    assert!(lines[0].starts_with("seckill: "), "{lines:?}");
    assert!(
        lines[0].contains(needle),
        "{:?} must mention {needle:?}",
        lines[0]
    );
}

fn memory_flag() -> &'static [&'static str] {
    if cfg!(feature = "persistence") {
        &[]
    } else {
        &["--unsafe-memory-journal"]
    }
}

#[test]
fn bad_flags_are_refused_in_one_line() {
    let output = run_to_exit(&["serve", "--no-such-flag"], EXIT_LIMIT);
    assert_refused(&output, "--no-such-flag");
    let output = run_to_exit(&["serve", "--auth", "magic"], EXIT_LIMIT);
    assert_refused(&output, "magic");
    let output = run_to_exit(&["serve", "--auth", "header", "--shards", "0"], EXIT_LIMIT);
    assert_refused(&output, "0");
    let output = run_to_exit(
        &["serve", "--auth", "header", "--listen", "not-an-address"],
        EXIT_LIMIT,
    );
    assert_refused(&output, "not-an-address");
    let output = run_to_exit(&["frobnicate"], EXIT_LIMIT);
    assert_refused(&output, "frobnicate");
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("seckill.toml");
    std::fs::write(&file, "auth = \"header\"\nadmin_key = \"k\"\n").expect("write");
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, b"x").expect("write");
    let data = path_arg(&not_a_dir.join("data"));
    let config = path_arg(&file);
    let run = |args: &[&str], auth_env: &str| {
        let child = common::process::seckill()
            .args(args)
            .env("SECKILL_AUTH", auth_env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        common::process::wait_with_limit(child, EXIT_LIMIT)
    };
    // The file says header, the environment jwt (no secret): the environment wins.
    let output = run(&["serve", "--config", &config, "--data-dir", &data], "jwt");
    assert_refused(&output, "--user-secret");
    // The flag says header: it beats the environment, and start-up gets as far as the
    // data directory.
    let output = run(
        &[
            "serve",
            "--config",
            &config,
            "--data-dir",
            &data,
            "--auth",
            "header",
        ],
        "jwt",
    );
    assert_refused(&output, "data directory");
    // A bad value in the environment is refused like a bad flag.
    let output = run(&["serve", "--config", &config], "magic");
    assert_refused(&output, "magic");
}

#[test]
fn jwt_mode_without_a_secret_says_how_to_set_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let output = run_to_exit(&["serve", "--data-dir", &data], EXIT_LIMIT);
    assert_refused(&output, "--user-secret");
    assert!(String::from_utf8_lossy(&output.stderr).contains("SECKILL_USER_SECRET"));
}

#[test]
fn an_unwritable_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A regular file where a directory should be: unwritable even for root.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let data = path_arg(&file.join("data"));
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--auth",
        "header",
        "--admin-key",
        "k",
        "--data-dir",
        &data,
        "--listen",
        &listen,
    ];
    args.extend_from_slice(memory_flag());
    let output = run_to_exit(&args, EXIT_LIMIT);
    assert_refused(&output, "data directory");
}

#[test]
fn a_build_without_a_durable_journal_refuses_to_claim_durability() {
    if cfg!(feature = "persistence") {
        println!("skipped: this build has the durable journal");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let output = run_to_exit(
        &["serve", "--auth", "header", "--data-dir", &data],
        EXIT_LIMIT,
    );
    assert_refused(&output, "durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_is_refused() {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no data directory lock)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let first = ServerProcess::start(
        &["--auth", "header", "--admin-key", "k", "--data-dir", &data],
        free_port(),
    )
    .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let output = run_to_exit(
        &[
            "serve",
            "--auth",
            "header",
            "--admin-key",
            "k",
            "--data-dir",
            &data,
            "--listen",
            &listen,
        ],
        EXIT_LIMIT,
    );
    assert_refused(&output, "in use");
    let (status, _) = first.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn an_unreachable_database_is_refused() {
    if cfg!(not(feature = "persistence")) {
        println!("skipped: built without the persistence feature (no SQL flusher)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let listen = format!("127.0.0.1:{}", free_port());
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let output = run_to_exit(
        &[
            "serve",
            "--auth",
            "header",
            "--admin-key",
            "k",
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--database-url",
            "postgres://seckill@127.0.0.1:1/seckill",
        ],
        EXIT_LIMIT,
    );
    let lines = refusal_lines(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {lines:?}");
    let last = lines.last().expect("a refusal line");
    assert!(
        last.starts_with("seckill: ") && last.contains("database"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_generated_admin_key_is_printed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_arg(&dir.path().join("data"));
    let mut args = vec!["--auth", "header", "--data-dir", &data];
    args.extend_from_slice(memory_flag());
    let server = ServerProcess::start(&args, free_port()).await;
    let (status, output) = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key_lines: Vec<&str> = stdout.lines().filter(|l| l.contains("admin key")).collect();
    assert_eq!(key_lines.len(), 1, "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("X-User-Id"),
        "header mode warns at start: {stderr}"
    );
    assert!(stderr.contains("stopped"), "{stderr}");
}
