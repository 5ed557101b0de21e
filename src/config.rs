//! The daemon's configuration: TOML, every key with a default, any key overridable by an
//! environment variable `SWITCHBOARD__SECTION__KEY`, unknown keys and bad values refused with
//! a message that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchboard_actors::inference::InferenceConfig;
use switchboard_actors::ingress::limits::LimitsConfig;
use switchboard_actors::platforms::config::{FeishuConfig, TelegramConfig};
use switchboard_actors::session::{InboxConfig, SessionConfig};
use switchboard_actors::supervisor::SupervisionConfig;

/// Prefix of configuration environment variables; `__` separates the levels.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";
/// The config file used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/switchboard.toml";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub inference: InferenceConfig,
    pub sessions: SessionConfig,
    pub inbox: InboxConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub api: ApiConfig,
    /// `[limits]`: per-user rate limits on the chat platforms.
    pub limits: LimitsConfig,
    /// `[[telegram]]`: Telegram bots.
    pub telegram: Vec<TelegramConfig>,
    /// `[[feishu]]`: Feishu / Lark apps.
    pub feishu: Vec<FeishuConfig>,
    pub supervision: SupervisionConfig,
    pub log: LogConfig,
    pub testing: TestingConfig,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (`127.0.0.1:0` picks a free port, which is logged).
    pub listen: String,
    /// Largest accepted request body in bytes (chat and admin API); larger ones get 413.
    pub max_body_bytes: u64,
    /// Largest accepted platform webhook body in bytes (`/webhook/...`); larger ones get 413.
    /// Platforms send bigger bodies than API clients (encrypted Feishu events, long Telegram
    /// updates), hence a limit of their own.
    pub webhook_max_body_bytes: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the daemon exits.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".into(), max_body_bytes: 65_536, webhook_max_body_bytes: 1 << 20, shutdown_grace_secs: 30 }
    }
}

/// `[model]`: which model to serve and where ONNX Runtime is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model folder in Hugging Face Optimum layout (model.onnx, config.json, tokenizer.json, …).
    pub path: PathBuf,
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, else `runtime/libonnxruntime.so`
    /// installed by `make setup`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime_lib: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("models/tiny"), onnxruntime_lib: None }
    }
}

/// `[storage]`: where history, the inbox, dead letters and the audit log live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// SQLite database file (the embedded default), used when `url` is not set.
    pub path: PathBuf,
    /// `postgres://user:password@host/db` to use PostgreSQL instead (for several nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// PostgreSQL schema holding the tables (created if missing).
    pub schema: String,
    /// This node's name in the inbox (each node replays only its own unfinished messages at
    /// start). Empty: the host name.
    pub node_id: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("data/switchboard.db"), url: None, schema: "public".into(), node_id: String::new() }
    }
}

impl StorageConfig {
    /// The database address: `url`, else `sqlite://<path>`.
    pub fn database_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("sqlite://{}", self.path.display()))
    }

    pub fn node(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".into())
    }
}

/// Admin API roles, each including the ones before it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read conversations and dead letters.
    Viewer,
    /// Also replay dead letters.
    Operator,
    /// Also erase conversations.
    Admin,
}

/// One admin API token. Only its SHA-256 is configured; the token itself never is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who uses it (written to the audit log).
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the bearer token (`printf %s TOKEN | sha256sum`).
    pub token_sha256: String,
}

/// `[admin]`: the admin API under `/admin/v1`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `[[admin.tokens]]` entries; with none, every admin route answers 401.
    pub tokens: Vec<AdminToken>,
}

/// `[api]`: who may use the chat API (`POST /api/v1/chat`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Accept requests without an API key; they share one conversation namespace. Meant for
    /// local use (the default config sets it on 127.0.0.1); `check-config` warns when it is on
    /// with a non-loopback `server.listen`. Default: false.
    pub allow_anonymous: bool,
    /// `[[api.keys]]`: bearer API keys. Each key's conversations live in a namespace of its own.
    pub keys: Vec<ApiKeyConfig>,
}

/// One chat API key. Only its SHA-256 is configured; the key itself never is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The client's name: its conversation namespace, metric label and log field.
    pub name: String,
    /// Hex SHA-256 of the bearer key (`printf %s KEY | sha256sum`).
    pub key_sha256: String,
    /// Most requests per minute with this key (a token bucket; over it: 429 with
    /// `Retry-After`). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Model backends this key may use (empty: all). This build has one backend, `local`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for Loki, ELK, …).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,switchboard_actors=debug` (`RUST_LOG` wins).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// `[testing]`: switches for the test suite only. Never enable in production.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TestingConfig {
    /// Lets chat texts `!fault:session-panic`, `!fault:worker-panic` and
    /// `!fault:worker-panic-always` crash actors on purpose, for the crash tests.
    pub fault_injection: bool,
}

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Loads `path` (or the default file, which may be absent), applies environment overrides
    /// from `env`, and validates.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let (file, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let mut table = match std::fs::read_to_string(&file) {
            Ok(text) => text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax { path: file.clone(), message: e.to_string() })?,
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
            Err(source) => return Err(ConfigError::Read { path: file, source }),
        };
        apply_env(&mut table, env)?;
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            let message = inner.split(" in `").next().unwrap_or(&inner).trim().to_string();
            ConfigError::Key { key, message }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section; errors name the key and echo the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::Invalid(format!("`server.listen` must be an address like 127.0.0.1:8080. Given: {:?}", self.server.listen))
        })?;
        for (key, value) in
            [("server.max_body_bytes", self.server.max_body_bytes), ("server.webhook_max_body_bytes", self.server.webhook_max_body_bytes)]
        {
            if value < 64 {
                return Err(ConfigError::Invalid(format!("`{key}` must be at least 64. Given: {value}")));
            }
        }
        self.inference.validate().map_err(ConfigError::Invalid)?;
        self.sessions.validate().map_err(ConfigError::Invalid)?;
        self.supervision.validate().map_err(ConfigError::Invalid)?;
        self.inbox.validate().map_err(ConfigError::Invalid)?;
        if let Some(url) = &self.storage.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite://")) {
                return Err(ConfigError::Invalid(
                    "`storage.url` must start with postgres:// (or sqlite://). Given: a URL with another scheme".into(),
                ));
            }
        }
        let mut accounts = std::collections::HashSet::new();
        for (i, t) in self.telegram.iter().enumerate() {
            t.validate(i).map_err(ConfigError::Invalid)?;
            if !accounts.insert(("telegram", t.account.clone())) {
                return Err(ConfigError::Invalid(format!("`telegram[{i}].account` {:?} is used twice", t.account)));
            }
        }
        for (i, f) in self.feishu.iter().enumerate() {
            f.validate(i).map_err(ConfigError::Invalid)?;
            if !accounts.insert(("feishu", f.account.clone())) {
                return Err(ConfigError::Invalid(format!("`feishu[{i}].account` {:?} is used twice", f.account)));
            }
        }
        for (i, t) in self.admin.tokens.iter().enumerate() {
            if t.token_sha256.len() != 64 || !t.token_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "`admin.tokens[{i}].token_sha256` must be 64 hex digits (the SHA-256 of the token, not the token)"
                )));
            }
            if t.name.trim().is_empty() {
                return Err(ConfigError::Invalid(format!("`admin.tokens[{i}].name` must not be empty")));
            }
        }
        self.validate_api()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Invalid(format!("`log.level` is not a valid filter ({e}). Given: {:?}", self.log.level)))?;
        Ok(())
    }

    fn validate_api(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, k) in self.api.keys.iter().enumerate() {
            if k.key_sha256.len() != 64 || !k.key_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "`api.keys[{i}].key_sha256` must be 64 hex digits (the SHA-256 of the key, not the key)"
                )));
            }
            let valid_name =
                !k.name.is_empty() && k.name.len() <= 64 && k.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid_name {
                return Err(ConfigError::Invalid(format!("`api.keys[{i}].name` must be 1-64 of A-Z a-z 0-9 - _ . Given: {:?}", k.name)));
            }
            if !names.insert(k.name.as_str()) {
                return Err(ConfigError::Invalid(format!("`api.keys[{i}].name` {:?} is used twice", k.name)));
            }
            if k.rate_per_minute == Some(0) {
                return Err(ConfigError::Invalid(format!(
                    "`api.keys[{i}].rate_per_minute` must be at least 1 (or unset for no limit). Given: 0"
                )));
            }
        }
        Ok(())
    }

    /// Warnings about a valid but risky configuration (printed by `check-config`, logged at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let loopback = self.server.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
        if self.api.allow_anonymous && !loopback {
            w.push(format!(
                "`api.allow_anonymous = true` with `server.listen` = {:?}: anyone who can reach this address can use the chat API and the model; configure `[[api.keys]]` instead",
                self.server.listen
            ));
        }
        w
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("config serializes");
        mask_secrets(&mut value);
        toml::to_string_pretty(&value).expect("config prints")
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated")
    }
}

/// Sets `SWITCHBOARD__A__B=value` as key `a.b`. The value is read as a TOML value when it parses
/// as one (numbers, booleans, arrays), else as a string.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, message: "empty key segment".into() });
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let (last, parents) = path.split_last().expect("non-empty");
        let mut cur = &mut *table;
        for p in parents {
            let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry.as_table_mut().ok_or_else(|| ConfigError::Env { var: var.clone(), message: format!("`{p}` is not a section") })?;
        }
        cur.insert(last.clone(), value);
    }
    Ok(())
}

/// Key names whose values are secrets.
fn is_secret_key(key: &str) -> bool {
    ["token", "secret", "password", "encrypt_key", "api_key"].iter().any(|s| key.contains(s))
        && !key.ends_with("_file")
        && !key.ends_with("_env")
        && !key.ends_with("_sha256")
}

fn mask_url_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn mask_secrets(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => {
            for (k, val) in t.iter_mut() {
                if k == "url" {
                    // Mask only the password part of a database URL.
                    if let Some(u) = val.as_str() {
                        *val = toml::Value::String(mask_url_password(u));
                    }
                } else if is_secret_key(k) && val.is_str() {
                    *val = toml::Value::String("***".into());
                } else {
                    mask_secrets(val);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let cfg = Config::load(None, env(&[])).unwrap();
        assert_eq!(cfg.server.max_body_bytes, 65_536);
        assert_eq!(cfg.server.listen, "127.0.0.1:8080");
        assert_eq!(cfg.model.path, PathBuf::from("models/tiny"));
        assert!(!cfg.testing.fault_injection);
    }

    #[test]
    fn file_then_env_override() {
        let f = write("[server]\nlisten = \"127.0.0.1:9000\"\n[inference]\nworkers = 3\n");
        let cfg = Config::load(
            Some(f.path()),
            env(&[("SWITCHBOARD__SERVER__LISTEN", "127.0.0.1:18080"), ("SWITCHBOARD__INFERENCE__MAX_BATCH", "4"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(cfg.server.listen, "127.0.0.1:18080");
        assert_eq!(cfg.inference.workers, 3);
        assert_eq!(cfg.inference.max_batch, 4);
    }

    #[test]
    fn unknown_key_is_named() {
        let f = write("[server]\nlisten = \"127.0.0.1:9000\"\nlistne = 1\n");
        let err = Config::load(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("server.listne"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        let err = Config::load(None, env(&[("SWITCHBOARD__NOPE__X", "1")])).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let f = write("[inference]\nworkers = \"many\"\n");
        let err = Config::load(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("inference.workers"), "{err}");
        let err = Config::load(None, env(&[("SWITCHBOARD__INFERENCE__MAX_BATCH", "0")])).unwrap_err().to_string();
        assert!(err.contains("`inference.max_batch` must be at least 1. Given: 0"), "{err}");
        let err = Config::load(None, env(&[("SWITCHBOARD__SERVER__LISTEN", "nowhere")])).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
        let err = Config::load(None, env(&[("SWITCHBOARD__LOG__FORMAT", "xml")])).unwrap_err().to_string();
        assert!(err.contains("log.format"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/switchboard.toml")), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn secrets_are_masked() {
        let mut v: toml::Value = toml::from_str("[a]\nbot_token = \"123:abc\"\ntoken_sha256 = \"ff\"\nname = \"x\"").unwrap();
        mask_secrets(&mut v);
        let s = toml::to_string(&v).unwrap();
        assert!(s.contains("bot_token = \"***\""), "{s}");
        assert!(s.contains("token_sha256 = \"ff\""), "{s}");
        assert!(!s.contains("123:abc"));
        assert_eq!(mask_url_password("postgres://bob:hunter2@db/x"), "postgres://bob:***@db/x");
    }

    #[test]
    fn admin_tokens_need_a_hash() {
        let f = write("[[admin.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken_sha256 = \"secret-token\"\n");
        let err = Config::load(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("admin.tokens[0].token_sha256"), "{err}");
        let f = write("[[admin.tokens]]\nname = \"ops\"\nrole = \"root\"\ntoken_sha256 = \"00\"\n");
        let err = Config::load(Some(f.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("admin.tokens"), "{err}");
    }
}
