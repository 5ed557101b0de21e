//! Delivering a model answer while it is generated. On a streaming platform the first text is
//! posted early and edited at most every `stream_interval` while text arrives (while it fits one
//! message, so it never shrinks); failed edits are skipped, the next carries all the text. When
//! generation is done the answer is sent in full: the streamed message is edited to the first
//! chunk (or the first chunk replies to the user), further chunks follow as new messages.

use std::time::{Duration, Instant};

use super::{AnswerFeed, OnDelivered, Outbox, SendError, with_retries};
use crate::telemetry::{self, SendOutcome};

/// What has been shown on the platform so far.
struct Shown {
    /// The streamed message (from the first `stream_update`), once posted.
    handle: Option<String>,
    /// The text it shows.
    text: String,
    /// When it was last edited.
    last_edit: Instant,
}

/// Delivers one answer fed by `feed`, then reports (nothing is reported when generation
/// failed: the session retries or apologises; what was streamed stays).
pub(crate) async fn deliver_answer(mut out: Outbox, feed: AnswerFeed, on_delivered: Option<OnDelivered>) {
    let AnswerFeed { mut deltas, done } = feed;
    let interval = out.sender.stream_interval();
    let mut text = String::new();
    let mut shown = Shown { handle: None, text: String::new(), last_edit: Instant::now() - interval };
    loop {
        match tokio::time::timeout(interval, deltas.recv()).await {
            Ok(Some(d)) => text.push_str(&d),
            Ok(None) => break,
            Err(_) => {}
        }
        if out.sender.streams() && !text.trim().is_empty() && shown.last_edit.elapsed() >= interval {
            stream_edit(&out, &text, &mut shown).await;
        }
    }
    if !done.await.unwrap_or(false) {
        return;
    }
    let result = finish(&mut out, &text, &shown, interval).await;
    out.report(result, on_delivered);
}

/// Posts or edits the streamed message to show `text`, when it still fits one message.
async fn stream_edit(out: &Outbox, text: &str, shown: &mut Shown) {
    let mut chunks = out.sender.chunks(text);
    if chunks.len() != 1 || chunks[0] == shown.text {
        return;
    }
    let first = chunks.remove(0);
    tokio::time::sleep(out.sender.reserve(&out.target)).await;
    let started = Instant::now();
    let r = out.sender.stream_update(&out.target, shown.handle.as_deref(), &first).await;
    let outcome = r.as_ref().map_or_else(SendError::outcome, |_| SendOutcome::Ok);
    telemetry::egress_send(out.sender.platform(), out.sender.account(), outcome, started.elapsed());
    match r {
        Ok(h) => {
            shown.handle.get_or_insert(h);
            shown.text = first;
        }
        Err(e) => tracing::debug!(error = ?e, "A streaming update failed; the next one carries all the text."),
    }
    shown.last_edit = Instant::now();
}

/// Sends the whole answer: the streamed message edited to the first chunk, the rest as new
/// messages (or every chunk as a new message when nothing was streamed).
async fn finish(out: &mut Outbox, text: &str, shown: &Shown, interval: Duration) -> Result<(), String> {
    let sender = out.sender.clone();
    for (i, chunk) in sender.chunks(text).iter().enumerate() {
        match &shown.handle {
            Some(_) if i == 0 && *chunk == shown.text => {}
            Some(h) if i == 0 => {
                // The final edit keeps the pace of the streaming ones.
                tokio::time::sleep_until((shown.last_edit + interval).into()).await;
                tokio::time::sleep(sender.reserve(&out.target)).await;
                let target = out.target.clone();
                with_retries(&*sender, out.max_attempts, || sender.stream_update(&target, Some(h), chunk)).await?;
            }
            _ => {
                tokio::time::sleep(sender.reserve(&out.target)).await;
                out.send_chunk(chunk, i).await?;
            }
        }
    }
    Ok(())
}
