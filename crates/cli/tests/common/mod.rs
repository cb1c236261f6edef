//! What the binary-driving tests share: running `trustmesh`, reading its output, and [`Proc`],
//! a child process that is always stopped by PID when the test ends.
//! Each test binary uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test, with none of the environment a developer's shell may set.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trustmesh"));
    c.env_remove("TRUSTMESH_STATE")
        .env_remove("TRUSTMESH_CONFIG")
        .env_remove("RUST_LOG");
    c
}

/// Runs `trustmesh args...` to completion.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run trustmesh")
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Standard output as JSON, or a panic showing both streams.
pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

/// The value of `key` (e.g. `admin=`) in a ready line of `key=value` words.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A `trustmesh` child process; its stderr goes to a log file, its stdout lines to
/// [`Proc::ready_line`]. Dropping it stops it: SIGTERM by PID, SIGKILL after 5 s.
pub struct Proc {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    /// Starts `trustmesh args...`, stderr to `log`.
    pub fn start(args: &[&str], log: &Path) -> Self {
        let mut child = bin()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child: Some(child),
            lines,
            log: log.to_owned(),
        }
    }

    /// The first stdout line (each process prints a ready line), within `within`.
    pub fn ready_line(&self, within: Duration) -> String {
        self.lines.recv_timeout(within).unwrap_or_else(|e| {
            panic!(
                "no ready line ({e}); log {}:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    fn sigterm(child: &Child) {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// SIGTERM, then the exit status; fails the test if it has not exited within `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        Self::sigterm(child);
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by PID, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        Self::sigterm(&child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
