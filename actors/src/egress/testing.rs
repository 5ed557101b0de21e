//! A recording [`PlatformSender`] for egress unit tests (paused tokio time).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{DeliveryKey, Outbox, PlatformSender, SendError, Sent};
use crate::message::{Platform, ReplyTarget};

#[derive(Debug, Clone)]
pub enum Call {
    Send,
    Stream,
}

/// One platform call as the fake platform saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub what: Call,
    pub target: ReplyTarget,
    pub text: String,
}

/// Records every call; splits text every `chunk` characters.
pub struct Recorder {
    chunk: usize,
    stream_every: Option<Duration>,
    /// The first send reports the chat moved here.
    moves_to: Option<ReplyTarget>,
    /// Every send fails with this.
    fails: Option<SendError>,
    calls: Mutex<Vec<Recorded>>,
}

impl Recorder {
    fn new(chunk: usize) -> Self {
        Recorder { chunk, stream_every: None, moves_to: None, fails: None, calls: Mutex::new(Vec::new()) }
    }

    pub fn streaming(chunk: usize, every: Duration) -> Arc<Self> {
        Arc::new(Recorder { stream_every: Some(every), ..Recorder::new(chunk) })
    }

    pub fn moving_to(chunk: usize, to: ReplyTarget) -> Arc<Self> {
        Arc::new(Recorder { moves_to: Some(to), ..Recorder::new(chunk) })
    }

    pub fn failing(e: SendError) -> Arc<Self> {
        Arc::new(Recorder { fails: Some(e), ..Recorder::new(100) })
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, what: Call, target: &ReplyTarget, text: &str) {
        self.calls.lock().unwrap().push(Recorded { at: Instant::now(), what, target: target.clone(), text: text.to_string() });
    }
}

/// An outbox delivering through `rec` to a Telegram private chat.
pub fn outbox(rec: &Arc<Recorder>) -> Outbox {
    let target = ReplyTarget::Telegram { chat_id: 1, thread_id: None, message_id: Some(9), group: false };
    Outbox { sender: rec.clone(), target, key: DeliveryKey::for_inbox(Some(1)), max_attempts: 3, moved_to: None }
}

#[async_trait]
impl PlatformSender for Recorder {
    fn platform(&self) -> Platform {
        Platform::Telegram
    }

    fn account(&self) -> &str {
        "test"
    }

    fn chunks(&self, text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(self.chunk).map(|c| c.iter().collect()).collect()
    }

    fn reserve(&self, _target: &ReplyTarget) -> Duration {
        Duration::ZERO
    }

    async fn send(&self, target: &ReplyTarget, chunk: &str, _key: &str, _first: bool) -> Result<Sent, SendError> {
        self.record(Call::Send, target, chunk);
        if let Some(e) = &self.fails {
            return Err(e.clone());
        }
        let first_send = self.calls.lock().unwrap().iter().filter(|c| matches!(c.what, Call::Send)).count() == 1;
        Ok(if first_send { self.moves_to.clone() } else { None })
    }

    fn streams(&self) -> bool {
        self.stream_every.is_some()
    }

    fn stream_interval(&self) -> Duration {
        self.stream_every.unwrap_or(Duration::from_secs(1))
    }

    async fn stream_update(&self, target: &ReplyTarget, _handle: Option<&str>, text: &str) -> Result<String, SendError> {
        self.record(Call::Stream, target, text);
        Ok("1".into())
    }
}
