//! The files of a Hugging Face style model folder other than the ONNX graph: `config.json`,
//! `generation_config.json`, `tokenizer.json` and `tokenizer_config.json` (with its chat template).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::ModelError;

/// One chat turn as the chat template sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.to_string(), content: content.into() }
    }
}

/// Generation defaults read from `generation_config.json` (missing keys fall back to HF's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    pub max_new_tokens: Option<usize>,
    /// `false` means greedy decoding unless a request asks for sampling.
    pub do_sample: bool,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
}

/// Everything about a model except its ONNX session; cheap to share behind an `Arc`.
pub struct ModelAssets {
    /// The model folder.
    pub dir: PathBuf,
    /// Path of the ONNX graph (`model.onnx`, or `decoder_model_merged.onnx` in older exports).
    pub onnx_path: PathBuf,
    /// The tokenizer, from `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// The chat template, compiled.
    pub template: ChatTemplate,
    /// Context window in tokens (`n_positions` / `max_position_embeddings`).
    pub context_window: usize,
    /// Vocabulary size of the logits.
    pub vocab_size: usize,
    /// Defaults for sampling and stopping.
    pub generation: GenerationDefaults,
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Asset(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Asset(format!("{} is not valid JSON: {e}", path.display())))
}

fn first_usize(v: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64)).map(|n| n as usize)
}

/// `tokenizer_config.json` writes special tokens either as strings or as `{"content": "..."}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ModelAssets {
    /// Loads and checks every asset file in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Asset(format!("model folder {} does not exist (run `make setup`?)", dir.display())));
        }
        let onnx_path = ["model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::Asset(format!("no model.onnx in {}", dir.display())))?;
        let config = read_json(&dir.join("config.json"))?;
        let gen_cfg =
            if dir.join("generation_config.json").is_file() { read_json(&dir.join("generation_config.json"))? } else { Value::Null };
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Asset(format!("cannot load {}/tokenizer.json: {e}", dir.display())))?;

        let context_window = first_usize(&config, &["max_position_embeddings", "n_positions", "n_ctx"])
            .ok_or_else(|| ModelError::Asset("config.json has no max_position_embeddings / n_positions".into()))?;
        let vocab_size = first_usize(&config, &["vocab_size"]).ok_or_else(|| ModelError::Asset("config.json has no vocab_size".into()))?;

        let eos_token = token_text(tok_config.get("eos_token"));
        let bos_token = token_text(tok_config.get("bos_token"));
        let mut eos_token_ids: Vec<u32> = match gen_cfg.get("eos_token_id").or_else(|| config.get("eos_token_id")) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            _ => Vec::new(),
        };
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let f = |k: &str, d: f64| gen_cfg.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
        let generation = GenerationDefaults {
            eos_token_ids,
            max_new_tokens: first_usize(&gen_cfg, &["max_new_tokens"]),
            do_sample: gen_cfg.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
            temperature: f("temperature", 1.0),
            top_p: f("top_p", 1.0),
            top_k: first_usize(&gen_cfg, &["top_k"]).unwrap_or(50),
            repetition_penalty: f("repetition_penalty", 1.0),
        };
        let source = tok_config
            .get("chat_template")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Asset("tokenizer_config.json has no chat_template".into()))?;
        let template = ChatTemplate::new(source, bos_token.unwrap_or_default(), eos_token.unwrap_or_default())?;
        Ok(Self { dir: dir.to_path_buf(), onnx_path, tokenizer, template, context_window, vocab_size, generation })
    }

    /// Tokenizes a rendered prompt. Special tokens written in the template (e.g. `<|im_start|>`)
    /// are matched as such; no extra BOS/EOS is added since the template already has them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}

/// A compiled Hugging Face chat template (Jinja, run by minijinja set up like transformers does).
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self, ModelError> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |m: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m))
        });
        env.add_filter("tojson", py_tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| ModelError::Template(e.to_string()))?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// Renders the conversation, ending with the assistant prompt when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, ModelError> {
        let ctx = serde_json::json!({
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        let tmpl = self.env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(minijinja::Value::from(minijinja::value::Serde(&ctx))).map_err(|e| ModelError::Template(e.to_string()))
    }
}

/// `tojson` as Python's `json.dumps(ensure_ascii=False)` writes it (HF templates rely on this),
/// unlike minijinja's HTML-escaping built-in.
fn py_tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json: Value =
        serde_json::to_value(&value).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    let out = match indent {
        Some(n) => {
            let ind = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&ind);
            let mut buf = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&json, &mut ser)
                .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(buf).unwrap_or_default()
        }
        None => python_compact(&json),
    };
    Ok(minijinja::Value::from_safe_string(out))
}

/// Python's default `json.dumps` separators: `", "` and `": "`.
fn python_compact(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("[{}]", a.iter().map(python_compact).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_compact(v))).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML, String::new(), "<|im_end|>".into()).unwrap();
        let out = t.render(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn tojson_matches_python() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", py_tojson);
        let out = env
            .render_str("{{ x | tojson }}", minijinja::context! { x => minijinja::Value::from(minijinja::value::Serde(serde_json::json!({"b": "<a & 'c'>", "a": [1, 2]}))) })
            .unwrap();
        assert_eq!(out, r#"{"b": "<a & 'c'>", "a": [1, 2]}"#);
    }

    #[test]
    fn raise_exception_surfaces_as_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", String::new(), String::new()).unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
