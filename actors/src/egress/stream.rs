//! Delivering a model answer while it is generated. On a streaming platform the first text is
//! posted early and edited at most every `stream_interval` while text arrives (while it fits one
//! message, so it never shrinks); failed edits are skipped, the next carries all the text. When
//! generation is done the answer is sent in full: the streamed message is edited to the first
//! chunk (or the first chunk replies to the user), further chunks follow as new messages.

use std::time::Duration;

use tokio::time::Instant;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};

    use super::super::testing::{Call, Recorder, outbox};
    use super::*;

    /// Feeds `parts` one every `every`, then ends generation with `ok`.
    async fn feed(parts: &[&str], every: Duration, ok: bool) -> AnswerFeed {
        let (tx, deltas) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        tokio::spawn(async move {
            for p in parts {
                let _ = tx.send(p);
                tokio::time::sleep(every).await;
            }
            drop(tx);
            let _ = done_tx.send(ok);
        });
        AnswerFeed { deltas, done }
    }

    #[tokio::test(start_paused = true)]
    async fn streamed_edits_keep_their_pace_and_the_whole_answer_arrives() {
        let rec = Recorder::streaming(100, Duration::from_secs(1));
        let (report, delivered) = oneshot::channel();
        let answer = feed(&["ab", "cd", "ef", "gh", "ij", "kl"], Duration::from_millis(400), true).await;
        deliver_answer(outbox(&rec), answer, Some(Box::new(move |d| drop(report.send(d))))).await;
        let calls = rec.calls();
        let edits: Vec<_> = calls.iter().filter(|c| matches!(c.what, Call::Stream)).collect();
        assert!(edits.len() >= 2, "{calls:?}");
        for pair in edits.windows(2) {
            assert!(pair[1].at - pair[0].at >= Duration::from_secs(1), "edits closer than the interval: {calls:?}");
        }
        assert_eq!(edits.last().unwrap().text, "abcdefghijkl", "the final edit shows the whole answer");
        assert!(calls.iter().all(|c| !matches!(c.what, Call::Send)), "one message, edited: {calls:?}");
        assert_eq!(delivered.await.unwrap().result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_streamed_answer_ends_as_the_edited_first_part_plus_new_messages() {
        let rec = Recorder::streaming(6, Duration::from_millis(500));
        let answer = feed(&["abc", "def", "ghi", "jkl", "mn"], Duration::from_millis(300), true).await;
        deliver_answer(outbox(&rec), answer, None).await;
        let calls = rec.calls();
        let last_edit = calls.iter().rev().find(|c| matches!(c.what, Call::Stream)).unwrap();
        assert_eq!(last_edit.text, "abcdef");
        let sends: Vec<_> = calls.iter().filter(|c| matches!(c.what, Call::Send)).map(|c| c.text.as_str()).collect();
        assert_eq!(sends, ["ghijkl", "mn"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_generation_reports_nothing() {
        let rec = Recorder::streaming(100, Duration::from_millis(200));
        let (report, delivered) = oneshot::channel::<crate::egress::Delivery>();
        let answer = feed(&["partial"], Duration::from_millis(300), false).await;
        deliver_answer(outbox(&rec), answer, Some(Box::new(move |d| drop(report.send(d))))).await;
        assert!(delivered.await.is_err(), "the session retries or apologises; egress reports nothing");
        assert!(rec.calls().iter().all(|c| !matches!(c.what, Call::Send)));
    }
}
