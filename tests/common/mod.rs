//! Test harness: starts the real `switchboard` binary on port 0 with the tiny generated model
//! and talks HTTP to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod feishu_fake;
pub mod telegram_fake;

/// Admin tokens `viewer-token`, `operator-token`, `admin-token` as config TOML.
pub fn admin_tokens() -> String {
    use sha2::Digest;
    let h = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    format!(
        "[[admin.tokens]]\nname = \"vera\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n\n[[admin.tokens]]\nname = \"otto\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\n[[admin.tokens]]\nname = \"ada\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n",
        h("viewer-token"),
        h("operator-token"),
        h("admin-token")
    )
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How long after a moment a `switchboard_inbox_depth` reading is surely from a refresh that
/// started after it: the daemon refreshes the gauge every 2 s (plus the query time).
const INBOX_GAUGE_FRESH: Duration = Duration::from_millis(3000);

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub base: String,
    /// Every stderr line so far (JSON log lines).
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Daemon {
    /// Starts the daemon with the base test config plus `extra` TOML appended, and waits until
    /// it listens. `extra` may add sections that the base does not have.
    pub fn start(extra: &str) -> Daemon {
        Self::start_with_env(extra, &[])
    }

    /// Starts with another model folder.
    pub fn start_with_model(extra: &str, model: &std::path::Path) -> Daemon {
        Self::start_with_env(&format!("#model: {}\n{extra}", model.display()), &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let root = root();
        // `extra` may pick another model with a `#model: NAME` line.
        let model = extra.lines().find_map(|l| l.strip_prefix("#model: ")).unwrap_or("tiny");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 20\n\n[api]\nallow_anonymous = true\n\n[limits]\nuser_per_minute = 0\n\n[model]\npath = \"{}\"\nonnxruntime_lib = \"{}\"\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{extra}\n",
            if model.starts_with('/') { PathBuf::from(model) } else { root.join("models").join(model) }.display(),
            root.join("runtime/libonnxruntime.so").display(),
        );
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("run").arg("--config").arg(&path).current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("RUST_LOG");
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Switchboard is listening.") {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                            if let Some(a) = v.get("addr").and_then(|a| a.as_str()) {
                                let _ = tx.send(a.to_string());
                            }
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start; logs:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        Daemon { child, base: format!("http://{addr}"), logs, _dir: dir, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon never became ready; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET an admin route with a bearer token.
    pub async fn admin_get(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn chat(&self, conversation: &str, text: &str) -> (u16, serde_json::Value) {
        self.post_json("/api/v1/chat", serde_json::json!({"conversation": conversation, "user": "tester", "text": text})).await
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn metrics(&self) -> String {
        self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// Sum of all samples of a metric whose line starts with `prefix` (name plus optional
    /// label prefix, e.g. `switchboard_actor_restarts_total{actor="session"`).
    pub async fn metric(&self, prefix: &str) -> f64 {
        sum_metric(&self.metrics().await, prefix)
    }

    /// Polls a metric until `pred` holds.
    pub async fn wait_metric(&self, prefix: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.metric(prefix).await;
            if pred(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "metric {prefix} stuck at {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the durable inbox holds no pending row, i.e. every message accepted before
    /// this call was finished: answered and its delivery reported by egress (after any send
    /// retries), or rejected, or dead-lettered. The `switchboard_inbox_depth` gauge is refreshed
    /// every 2 s, so a 0 read right away may predate this call; only a 0 read more than one
    /// refresh period after the call started counts.
    pub async fn wait_inbox_empty(&self) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            let depth = self.metric("switchboard_inbox_depth").await;
            if depth == 0.0 && started.elapsed() >= INBOX_GAUGE_FRESH {
                return;
            }
            assert!(Instant::now() < deadline, "the inbox never emptied: depth {depth}; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a log line containing every one of `needles` and returns it.
    pub async fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = self.logs.lock().unwrap().iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?}; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not exit; logs:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter(|l| {
            // `name` alone must not match `name_bucket` etc.
            let rest = &l[prefix.len()..];
            rest.starts_with(' ')
                || rest.starts_with('{')
                || rest.starts_with(',')
                || rest.starts_with('}')
                || prefix.ends_with(',')
                || prefix.ends_with('"')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Parses a Server-Sent Events body into (event, data) pairs.
pub fn parse_sse(body: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for block in body.split("\n\n") {
        let mut event = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if !data.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data))));
        }
    }
    out
}
