//! Feishu / Lark Open Platform channel.
