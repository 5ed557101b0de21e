//! Incremental detokenization for streaming: emits text only once it is complete UTF-8, so a
//! multi-byte character split across byte-level tokens is never sent half-way.

use tokenizers::Tokenizer;

/// Streaming decoder of one sequence's generated tokens (the approach of TGI's `decode_token`:
/// decode a short window before and after the new token and emit the difference).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    /// Generated token ids so far.
    ids: Vec<u32>,
    /// Start of the window used as left context.
    prefix_offset: usize,
    /// Tokens before this index have been emitted as text.
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Adds a token and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true).unwrap_or_default();
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true).unwrap_or_default();
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }

    /// Text not yet emitted (e.g. an incomplete character at the end); called once at the end.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> String {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset], true).unwrap_or_default();
        let full = tokenizer.decode(&self.ids[self.prefix_offset..], true).unwrap_or_default();
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) { full[prefix.len()..].to_string() } else { String::new() }
    }

    /// All generated ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
