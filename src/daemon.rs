//! Wiring: logging, metrics, the ONNX Runtime, the actor tree and the HTTP server, plus the
//! shutdown sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_actors::egress::feishu::FeishuSender;
use switchboard_actors::egress::telegram::TelegramSender;
use switchboard_actors::egress::{PlatformSender, Streaming};
use switchboard_actors::inference::ExecutionProvider;
use switchboard_actors::ingress::feishu::FeishuApp;
use switchboard_actors::ingress::telegram::TelegramBot;
use switchboard_actors::ingress::{self, Ingress};
use switchboard_actors::message::Platform;
use switchboard_actors::model::onnx::{init_runtime, resolve_runtime_lib};
use switchboard_actors::model::{Device, ModelAssets, SessionOptions};
use switchboard_actors::platforms::config::TelegramMode;
use switchboard_actors::platforms::feishu::FeishuApi;
use switchboard_actors::platforms::telegram::BotApi;
use switchboard_actors::store::{SqlStore, Store};
use switchboard_actors::telemetry;
use switchboard_actors::tree::{self, TreeConfig};

use crate::config::{Config, LogFormat};
use crate::http::auth::AuthFailures;
use crate::http::{self, AppState, BodyLimits};
use switchboard_actors::ingress::limits::RateLimiter;

/// Sets up `tracing`: text or JSON lines, filtered by `log.level` unless `RUST_LOG` is set.
pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_ort(&cfg.log.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// ONNX Runtime logs every graph transformation at info; keep it at warn unless the filter
/// names `ort` itself.
fn quiet_ort(level: &str) -> String {
    if level.contains("ort") { level.to_string() } else { format!("{level},ort=warn") }
}

/// Installs the Prometheus recorder with the histogram buckets (set here, once).
fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), telemetry::LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(telemetry::INFERENCE_STEP.into()), telemetry::STEP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(telemetry::INFERENCE_BATCH_SIZE.into()), telemetry::BATCH_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder was already installed")?;
    telemetry::describe();
    metrics::gauge!(telemetry::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Runs the daemon until SIGTERM/SIGINT (exit code 0) or until the tree gives up (error).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let prometheus = init_metrics()?;
    telemetry::register_known_series(cfg.inference.workers, cfg.inference.max_queue);
    let process = metrics_process::Collector::default();
    process.describe();

    let (env, assets, device) = load_model(&cfg)?;
    let store = open_store(&cfg).await?;
    // Inbox rows older than this were left by an earlier run; newer ones are this run's own.
    let started_ms = switchboard_actors::store::now_ms();
    let node = cfg.storage.node();
    tracing::info!(backend = store.backend(), node = %node, "Opened the store.");
    let ingress = Ingress::new(store.clone(), node.clone(), &cfg.limits);
    let platforms = start_platforms(&cfg, &ingress)?;
    let upkeep_handle = prometheus.clone();
    let tree = tree::start(TreeConfig {
        assets,
        env,
        session_options: SessionOptions { intra_op_threads: cfg.inference.intra_op_threads, device },
        inference: cfg.inference.clone(),
        sessions: cfg.sessions.clone(),
        inbox: cfg.inbox.clone(),
        store: store.clone(),
        node: node.clone(),
        egress: platforms.senders,
        telegram_pollers: platforms.pollers,
        supervision: cfg.supervision.clone(),
        fault_injection: cfg.testing.fault_injection,
        upkeep: Arc::new(move || upkeep_handle.run_upkeep()),
    })
    .await
    .map_err(|e| anyhow::anyhow!("the actor tree did not start: {e}"))?;
    if cfg.testing.fault_injection {
        tracing::warn!("testing.fault_injection is on: chat texts can crash actors on purpose. Never use this in production.");
    }

    let state = Arc::new(AppState {
        started: Default::default(),
        shutting_down: Default::default(),
        ready_workers: tree.ready_workers.clone(),
        prometheus,
        process,
        limits: BodyLimits { api: cfg.server.max_body_bytes, webhook: cfg.server.webhook_max_body_bytes },
        chat_timeout: Duration::from_millis(cfg.inference.request_timeout_ms + 5_000),
        ingress,
        store: store.clone(),
        node: node.clone(),
        admin_tokens: cfg.admin.tokens.clone(),
        api: cfg.api.clone(),
        api_limits: cfg.api.keys.iter().filter_map(|k| Some((k.name.clone(), RateLimiter::per_minute(k.rate_per_minute?)))).collect(),
        auth_failures: AuthFailures::start(store.clone()),
        telegram: platforms.telegram,
        feishu: platforms.feishu,
    });
    state.audit("system", "daemon.start", &node, env!("CARGO_PKG_VERSION")).await;
    replay_inbox(&state, started_ms, cfg.inbox.orphan_after_secs).await?;
    tokio::spawn(inbox_gauges(store.clone()));
    serve(&cfg, state, tree).await
}

/// Loads ONNX Runtime and the model assets, and picks the device.
fn load_model(cfg: &Config) -> anyhow::Result<(ort::environment::Environment, Arc<ModelAssets>, Device)> {
    let lib = resolve_runtime_lib(cfg.model.onnxruntime_lib.as_deref());
    let env = init_runtime(&lib).context("`model.onnxruntime_lib`")?;
    tracing::info!(library = %lib.display(), "Loaded ONNX Runtime.");
    let assets = Arc::new(ModelAssets::load(&cfg.model.path).with_context(|| format!("`model.path` = {}", cfg.model.path.display()))?);
    tracing::info!(model = %cfg.model.path.display(), context_window = assets.context_window, vocab = assets.vocab_size, "Loaded the model assets.");
    let device = match cfg.inference.execution_provider {
        ExecutionProvider::Cpu => Device::Cpu,
        ExecutionProvider::Cuda => Device::Cuda {
            device_id: cfg.inference.cuda_device_id,
            memory_limit_bytes: (cfg.inference.cuda_memory_limit_mb > 0).then(|| cfg.inference.cuda_memory_limit_mb << 20),
        },
    };
    Ok((env, assets, device))
}

/// Serves HTTP until a signal (graceful drain, then the tree stops) or until the tree gives up.
async fn serve(cfg: &Config, state: Arc<AppState>, tree: tree::Tree) -> anyhow::Result<()> {
    let listener = listen(cfg.listen_addr()).with_context(|| format!("`server.listen`: cannot listen on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = warp::serve(http::routes(state.clone()))
        .incoming(listener)
        .graceful(async move {
            let _ = stop_rx.await;
        })
        .run();
    let mut server = tokio::spawn(server);
    state.started.store(true, Ordering::Release);
    tracing::info!(%addr, "Switchboard is listening.");

    let mut root_done = tree.handle;
    let signal = shutdown_signal();
    tokio::select! {
        sig = signal => {
            tracing::info!(signal = sig, "Shutting down: no new requests, finishing in-flight ones.");
        }
        _ = &mut root_done => {
            state.shutting_down.store(true, Ordering::Release);
            let _ = stop_tx.send(());
            anyhow::bail!("the supervision tree gave up after too many restarts; exiting so the service manager can restart the daemon");
        }
        r = &mut server => {
            anyhow::bail!("the HTTP server stopped unexpectedly: {r:?}");
        }
    }
    state.shutting_down.store(true, Ordering::Release);
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!(grace_secs = cfg.server.shutdown_grace_secs, "In-flight requests did not finish within the grace period.");
    }
    tree.root.stop(Some(switchboard_actors::supervisor::STOP_REASON_SHUTDOWN.into()));
    let _ = tokio::time::timeout(Duration::from_secs(10), root_done).await;
    tracing::info!("Switchboard stopped.");
    Ok(())
}

/// The configured platform accounts: their adapters (for the webhook routes and pollers) and
/// their egress senders.
struct Platforms {
    senders: Vec<Arc<dyn PlatformSender>>,
    pollers: Vec<Arc<TelegramBot>>,
    telegram: HashMap<String, Arc<TelegramBot>>,
    feishu: HashMap<String, Arc<FeishuApp>>,
}

/// Builds every `[[telegram]]` and `[[feishu]]` account; their start-up calls (getMe,
/// setWebhook, bot info) run in the background: an unreachable platform must not hold up
/// start-up.
fn start_platforms(cfg: &Config, ingress: &Ingress) -> anyhow::Result<Platforms> {
    let mut p = Platforms { senders: Vec::new(), pollers: Vec::new(), telegram: HashMap::new(), feishu: HashMap::new() };
    for (i, tc) in cfg.telegram.iter().enumerate() {
        let token = tc.resolve_token(i).map_err(|e| anyhow::anyhow!(e))?;
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        let api = BotApi::new(client, &tc.api_base, &token);
        let streaming = Streaming { enabled: tc.stream, interval: Duration::from_millis(tc.stream_interval_ms) };
        p.senders.push(Arc::new(TelegramSender::new(api.clone(), tc.account.clone(), streaming)));
        let bot = Arc::new(TelegramBot::new(tc.clone(), api, ingress.clone(), cfg.sessions.group_scope, cfg.testing.fault_injection));
        telemetry::register_platform_series(Platform::Telegram, &tc.account);
        tokio::spawn({
            let bot = bot.clone();
            async move { bot.init().await }
        });
        if tc.mode == TelegramMode::Polling {
            p.pollers.push(bot.clone());
        }
        p.telegram.insert(tc.account.clone(), bot);
    }
    for (i, fc) in cfg.feishu.iter().enumerate() {
        let secret = fc.resolve_secret(i).map_err(|e| anyhow::anyhow!(e))?;
        let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(30)).build()?;
        let api = Arc::new(FeishuApi::new(client, &fc.api_base, &fc.app_id, &secret));
        let streaming = Streaming { enabled: fc.stream, interval: Duration::from_millis(fc.stream_interval_ms) };
        p.senders.push(Arc::new(FeishuSender::new(api.clone(), fc.account.clone(), streaming)));
        let app = Arc::new(FeishuApp::new(fc.clone(), api, ingress.clone(), cfg.sessions.group_scope));
        telemetry::register_platform_series(Platform::Feishu, &fc.account);
        tokio::spawn({
            let app = app.clone();
            async move { app.init().await }
        });
        p.feishu.insert(fc.account.clone(), app);
    }
    Ok(p)
}

/// Binds the listener with TCP_NODELAY, which Linux passes on to accepted sockets: without it
/// Nagle's algorithm holds small streamed (SSE) writes until the client's delayed ACK (~40 ms).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Opens the configured store (SQLite file or PostgreSQL).
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = cfg.storage.database_url();
    let store = SqlStore::open(&url, &cfg.storage.schema).await.with_context(|| {
        if cfg.storage.url.is_some() { "`storage.url`".to_string() } else { format!("`storage.path` = {}", cfg.storage.path.display()) }
    })?;
    Ok(Arc::new(store))
}

/// Hands the messages this node accepted but never finished (a crash, a kill) back to their
/// sessions, oldest first; each conversation keeps its order.
async fn replay_inbox(state: &AppState, started_ms: i64, orphan_after_secs: u64) -> anyhow::Result<()> {
    let mut pending = state.store.inbox_pending(&state.node).await.context("reading the inbox")?;
    pending.retain(|e| e.created_ms < started_ms);
    if orphan_after_secs > 0 {
        let orphans =
            state.store.inbox_claim_orphans(&state.node, orphan_after_secs as i64 * 1000).await.context("claiming orphaned inbox rows")?;
        if !orphans.is_empty() {
            tracing::warn!(count = orphans.len(), "Took over messages left unanswered by another node.");
        }
        pending.extend(orphans);
        pending.sort_by_key(|e| e.id);
    }
    if pending.is_empty() {
        return Ok(());
    }
    tracing::warn!(count = pending.len(), "Replaying messages accepted before the last stop.");
    for entry in &pending {
        match ingress::resume(entry) {
            Ok(()) | Err(ingress::ResumeError::Unreadable) => {}
            Err(e @ ingress::ResumeError::NotRouted) => anyhow::bail!("replay: {e}"),
        }
    }
    Ok(())
}

/// Keeps the inbox depth and dead-letter gauges current.
async fn inbox_gauges(store: Arc<dyn Store>) {
    loop {
        match (store.inbox_depth().await, store.dead_letter_count().await) {
            (Ok(depth), Ok(dead)) => telemetry::inbox_gauges(depth, dead),
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "Could not read the inbox counts."),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
