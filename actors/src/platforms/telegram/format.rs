//! Outgoing text: HTML escaping and splitting long answers into Telegram-sized messages.
//!
//! The intended pipeline is: model answer (plain text) → [`split_message`] with
//! [`MAX_MESSAGE_LEN`] → [`escape_html`] on each chunk → `sendMessage` with `parse_mode: "HTML"`.
//! Splitting happens *before* escaping, so an escape sequence such as `&amp;` can never be cut
//! in half, and lengths are measured on the visible text, which is what Telegram's limit
//! applies to ("1-4096 characters after entities parsing").

/// The most characters one `sendMessage`/`editMessageText` text may have after entity parsing.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Escapes text for `parse_mode: "HTML"`: `&`, `<`, `>` and `"` become `&amp;`, `&lt;`,
/// `&gt;` and `&quot;` (the only named entities Telegram supports). The visible text, and so
/// its length as Telegram counts it, is unchanged.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// Length of `s` in UTF-16 code units, the unit of Telegram's entity offsets and (safely) of
/// its message length limit.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Separators [`split_message`] prefers to cut at, best first.
const SEPARATORS: [&str; 3] = ["\n\n", "\n", " "];

/// Splits plain (unescaped) text into chunks of at most `limit` UTF-16 code units each.
///
/// * Length is counted in UTF-16 code units of the visible text. That is the conservative
///   reading of Telegram's limit (PROTOCOLS.md 1.6): a chunk within it is also within a limit
///   counted in Unicode scalars. Escape with [`escape_html`] *after* splitting.
/// * Each cut is made at the last paragraph break (`"\n\n"`) in the allowed window, else the
///   last line break (`"\n"`), else the last space (`" "`), provided it lies in the last three
///   quarters of the window (so chunks are not needlessly tiny); otherwise the text is cut hard
///   at the last `char` boundary that fits. A `char` (and so a surrogate pair) is never split;
///   grapheme clusters such as ZWJ emoji sequences may be, at a hard cut only.
/// * Exactly the one separator used at a cut is dropped; a hard cut drops nothing. So the
///   original text equals the chunks joined with, at each boundary, one of `"\n\n"`, `"\n"`,
///   `" "` or `""`, except that chunks consisting only of whitespace (which Telegram rejects as
///   empty) are left out.
/// * Text that fits in one chunk is returned unchanged as the single chunk (unless it is all
///   whitespace, in which case the result is empty). A `limit` below 2 is treated as 2, so any
///   `char` fits.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut chunks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let window_end = fitting_prefix_len(rest, limit);
        if window_end == rest.len() {
            push_chunk(&mut chunks, rest);
            break;
        }
        let window = &rest[..window_end];
        let min_cut = window.len() / 4;
        let cut = SEPARATORS.iter().find_map(|sep| window.rfind(sep).filter(|&p| p > 0 && p >= min_cut).map(|p| (p, sep.len())));
        match cut {
            Some((p, sep_len)) => {
                push_chunk(&mut chunks, &rest[..p]);
                rest = &rest[p + sep_len..];
            }
            None => {
                push_chunk(&mut chunks, window);
                rest = &rest[window_end..];
            }
        }
    }
    chunks
}

/// Byte length of the longest prefix of `s` whose UTF-16 length is at most `limit` (`limit`
/// ≥ 2 guarantees at least one `char` fits, so the result is > 0 for non-empty `s`).
fn fitting_prefix_len(s: &str, limit: usize) -> usize {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > limit {
            return i;
        }
    }
    s.len()
}

fn push_chunk(chunks: &mut Vec<String>, chunk: &str) {
    if !chunk.trim().is_empty() {
        chunks.push(chunk.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the documented contract: every chunk fits, and the text is the chunks joined
    /// with one dropped separator (or none) at each boundary.
    fn assert_reassembles(text: &str, limit: usize) -> Vec<String> {
        let chunks = split_message(text, limit);
        let mut pos = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(utf16_len(chunk) <= limit.max(2), "chunk {i} too long: {}", utf16_len(chunk));
            assert!(!chunk.trim().is_empty());
            // Skip whitespace-only material that was dropped, then the chunk must follow.
            let found = text[pos..].find(chunk.as_str()).expect("chunk appears in order");
            let skipped = &text[pos..pos + found];
            if i > 0 {
                assert!(["", " ", "\n", "\n\n"].contains(&skipped) || skipped.trim().is_empty(), "unexpected dropped text {skipped:?}");
            } else {
                assert!(skipped.trim().is_empty());
            }
            pos += found + chunk.len();
        }
        assert!(text[pos..].trim().is_empty() || chunks.is_empty());
        chunks
    }

    #[test]
    fn escapes_html_specials() {
        assert_eq!(escape_html(r#"a < b && c > "d""#), "a &lt; b &amp;&amp; c &gt; &quot;d&quot;");
        assert_eq!(escape_html("plain é 😀"), "plain é 😀");
        assert_eq!(escape_html(""), "");
    }

    #[test]
    fn short_text_is_one_chunk_unchanged() {
        assert_eq!(split_message("hello\n\nworld", MAX_MESSAGE_LEN), vec!["hello\n\nworld"]);
        assert!(split_message("", MAX_MESSAGE_LEN).is_empty());
        assert!(split_message(" \n\n ", MAX_MESSAGE_LEN).is_empty());
    }

    #[test]
    fn ten_thousand_chars_split_at_paragraphs() {
        let para = format!("{}.", "word ".repeat(99)); // 496 chars
        let text = vec![para.as_str(); 20].join("\n\n"); // ~9,958 chars
        let text = format!("{text}\n\n{}", "x".repeat(10_000 - utf16_len(&text) - 2));
        assert_eq!(utf16_len(&text), 10_000);
        let chunks = assert_reassembles(&text, MAX_MESSAGE_LEN);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        // Every cut but possibly the last fell on a paragraph break.
        assert!(chunks[0].ends_with('.'));
        assert_eq!(chunks.concat().len() + 2 * (chunks.len() - 1), text.len());
    }

    #[test]
    fn prefers_lines_then_spaces_then_hard_cut() {
        assert_eq!(split_message("aaaa\nbbbb cccc", 10), vec!["aaaa", "bbbb cccc"]);
        assert_eq!(split_message("aaaa bbbb cccc", 10), vec!["aaaa bbbb", "cccc"]);
        assert_eq!(split_message("abcdefghijklmno", 10), vec!["abcdefghij", "klmno"]);
        // A separator very early in the window is not used: hard cut instead.
        assert_eq!(split_message("a bcdefghijklmno", 10), vec!["a bcdefghi", "jklmno"]);
        assert_reassembles(&"lorem ipsum\ndolor sit amet, \n\n".repeat(500), 100);
    }

    #[test]
    fn counts_utf16_and_never_splits_surrogate_pairs() {
        let emoji = "😀".repeat(5_000); // 10,000 UTF-16 units, no separators
        let chunks = assert_reassembles(&emoji, MAX_MESSAGE_LEN);
        assert_eq!(chunks.len(), 3);
        assert_eq!(utf16_len(&chunks[0]), 4096);
        assert_eq!(chunks[0].chars().count(), 2048);
        // Odd limit: a pair never straddles the boundary.
        let chunks = assert_reassembles("😀😀😀", 3);
        assert_eq!(chunks, vec!["😀", "😀", "😀"]);
    }

    #[test]
    fn cjk_and_mixed_text() {
        let text = "你好世界。".repeat(3_000) + "\n\n" + &"Grüße 😀 ".repeat(800);
        let chunks = assert_reassembles(&text, MAX_MESSAGE_LEN);
        assert!(chunks.len() >= 5);
        assert_reassembles(&text, 7);
    }

    #[test]
    fn tiny_limits_do_not_loop_or_panic() {
        assert_eq!(split_message("abc", 0), vec!["ab", "c"]);
        assert_eq!(split_message("😀", 1), vec!["😀"]);
        assert_reassembles("\n\n\n\n a \n\n\n", 2);
    }

    #[test]
    fn escaping_after_splitting_keeps_entities_whole() {
        let text = "&".repeat(5_000);
        for chunk in split_message(&text, MAX_MESSAGE_LEN) {
            let escaped = escape_html(&chunk);
            assert!(escaped.starts_with("&amp;") && escaped.ends_with("&amp;"));
            assert_eq!(escaped.len(), chunk.len() * 5);
        }
    }
}
