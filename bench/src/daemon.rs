//! The daemon under test: one process per scenario, with its own temporary config file and a
//! fresh SQLite database, killed (and both files removed) when the [`Daemon`] is dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::Args;

pub struct Daemon {
    child: Child,
    /// `http://ADDR` the daemon listens on.
    pub base: String,
    config_path: PathBuf,
    /// The daemon's own SQLite database (a fresh one per daemon, never the project's `data/`).
    db_path: PathBuf,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    /// Starts the daemon and waits until it logs the address it listens on.
    pub fn start(args: &Args, model: &Path, ort_lib: &Path, name: &str, max_batch: usize, max_wait_ms: u64) -> Result<Daemon> {
        let stem = std::env::temp_dir().join(format!("switchboard-bench-{}-{name}", std::process::id()));
        let config_path = stem.with_extension("toml");
        let db_path = stem.with_extension("db");
        remove_db(&db_path);
        let config = config_text(args, model, ort_lib, &db_path, max_batch, max_wait_ms);
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let mut child = spawn(&args.daemon, &config_path)?;
        let stderr = child.stderr.take().expect("piped");
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let rx = follow_log(stderr, log_tail.clone());
        let mut daemon = Daemon { child, base: String::new(), config_path, db_path, log_tail };
        daemon.wait_listening(&rx)?;
        Ok(daemon)
    }

    fn wait_listening(&mut self, rx: &mpsc::Receiver<String>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(addr) => {
                    self.base = format!("http://{addr}");
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        std::thread::sleep(Duration::from_millis(200));
                        bail!("the daemon exited during start-up ({status}); its log:\n{}", self.tail());
                    }
                    if Instant::now() > deadline {
                        bail!("the daemon did not log `Switchboard is listening.` within 180 s; its log:\n{}", self.tail());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(300));
                    bail!("the daemon closed its log without listening; its log:\n{}", self.tail());
                }
            }
        }
    }

    /// The exit status, if the daemon has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The last lines the daemon logged.
    pub fn tail(&self) -> String {
        self.log_tail.lock().expect("log tail").iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
        remove_db(&self.db_path);
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// The scenario's config file.
fn config_text(args: &Args, model: &Path, ort_lib: &Path, db_path: &Path, max_batch: usize, max_wait_ms: u64) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[api]\nallow_anonymous = true\n\n[model]\npath = {model}\nonnxruntime_lib = {lib}\n\n[storage]\npath = {db}\n\n\
         [inference]\nworkers = 1\nintra_op_threads = {threads}\nmax_batch = {max_batch}\nmax_wait_ms = {max_wait_ms}\n\
         max_queue = 1024\nrequest_timeout_ms = 300000\nmax_new_tokens = {new}\nexecution_provider = \"cpu\"\n\n\
         [sessions]\nsystem_prompt = \"\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,switchboard::daemon=info\"\n",
        model = toml_str(&model.to_string_lossy()),
        lib = toml_str(&ort_lib.to_string_lossy()),
        db = toml_str(&db_path.to_string_lossy()),
        threads = args.threads,
        new = args.new_tokens,
    )
}

/// Runs `daemon run --config CONFIG` with the bench's environment: no inherited overrides.
fn spawn(daemon: &Path, config_path: &Path) -> Result<Child> {
    let mut cmd = Command::new(daemon);
    cmd.arg("run").arg("--config").arg(config_path);
    // The scenario's config must be what runs: drop inherited overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD__") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SWITCHBOARD__SERVER__LISTEN", "127.0.0.1:0");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn().with_context(|| format!("starting {}", daemon.display()))
}

/// Reads the daemon's log on a thread, keeping its last 40 lines in `tail`; the receiver gets
/// the address from the `Switchboard is listening.` line.
fn follow_log(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("Switchboard is listening.")
                && let Ok(v) = serde_json::from_str::<Value>(&line)
            {
                let addr = v.get("addr").or_else(|| v.pointer("/fields/addr")).and_then(Value::as_str);
                if let Some(a) = addr {
                    let _ = tx.send(a.to_string());
                }
            }
            let mut t = tail.lock().expect("log tail");
            t.push_back(line);
            if t.len() > 40 {
                t.pop_front();
            }
        }
    });
    rx
}

/// Removes a SQLite database and its side files.
fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}
