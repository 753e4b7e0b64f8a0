//! Any `switchboard` subcommand as a long-running process (`demo-backends DIR`): its output
//! collected line by line, waited on with a bound, printed when a test fails, killed on drop.
//! `Switchboard` is the same for `run`, which also reads its listeners.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// `switchboard ARGS`, with `RUST_LOG=info`.
    pub fn start(args: &[&str]) -> Process {
        let mut child = Command::new(super::BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let log = Arc::new(Mutex::new(Vec::new()));
        super::spawn_reader(child.stdout.take().unwrap(), log.clone());
        super::spawn_reader(child.stderr.take().unwrap(), log.clone());
        Process { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many lines contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until a line contains every one of `needles`.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needles) == 0 {
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?} within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- switchboard output ---\n{}\n--- end ---", self.log());
        }
    }
}
