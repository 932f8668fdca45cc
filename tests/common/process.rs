//! The real binary: running subcommands, and a `serve` process that tests can signal or kill.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary, run from the repository root, seeing none of the test process's own
/// `REBILLY_WEBHOOKD*` variables nor `RUST_LOG`.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rebilly-webhookd"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command.env_remove("RUST_LOG").env("NO_COLOR", "1");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REBILLY_WEBHOOKD") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the binary with `--config <config>` and `args`.
pub fn run_cli(config: &Path, args: &[&str]) -> Output {
    binary()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// [`run_cli`] off the async runtime, so that an in-process server keeps serving meanwhile.
pub async fn run_cli_async(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&config, &args)
    })
    .await
    .unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout_json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(output),
            stderr(output)
        )
    })
}

pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// `--config <config> <subcommand>` with stderr piped and nothing else.
pub fn clean_command(config: &Path, subcommand: &str) -> Command {
    let mut command = binary();
    command
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs a command that must end by itself within `limit`; returns (success, exit code, stderr).
pub fn run_to_exit(mut command: Command, limit: Duration) -> (bool, Option<i32>, String) {
    let mut child = command.spawn().expect("the binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap();
    (status.success(), status.code(), text)
}

/// Writes `config.toml` into `dir`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The address in the daemon's `listening ... address=127.0.0.1:PORT` log line.
pub fn listening_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let start = line.find("address=")? + "address=".len();
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

/// A running `serve` process; stderr is drained by a thread into `log`, so the daemon never
/// blocks on a full pipe. Killed when dropped, so a failing test leaves nothing behind.
pub struct Daemon {
    pub child: Child,
    pub address: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// The thread draining stderr; joined once the process has exited, so that `log` then
    /// holds every line the daemon wrote.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `serve` and waits for the line with its address.
    pub fn start(config: &Path) -> Daemon {
        let mut child = binary()
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut found = Some(address_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = listening_address(&line) {
                    let _ = found.take().map(|tx| tx.send(address));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match address_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not log its address:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Daemon {
            child,
            address,
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM: the daemon stops accepting, answers what is in flight and checkpoints.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGTERM the daemon");
    }

    /// SIGTERM and a clean exit within 30 s; returns everything the daemon logged.
    pub async fn stop_cleanly(self) -> String {
        self.sigterm();
        let mut daemon = self;
        let (status, log) = tokio::task::spawn_blocking(move || {
            let status = daemon.wait_exit(Duration::from_secs(30));
            (status, daemon.log_text())
        })
        .await
        .unwrap();
        assert!(status.success(), "exit status {status:?}:\n{log}");
        log
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reap the daemon");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipe closed with the process: the reader ends after the last line.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not exit within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(super::wait::POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
