//! Untrusted Jinja chat templates (a GGUF's `tokenizer.chat_template`) through
//! `ChatTemplate::new` and `render`. The whole input is the template source (invalid UTF-8 is
//! replaced), so the seeds in seeds/chat_template/ are plain templates and fuzz/jinja.dict gives
//! libFuzzer the syntax.
//!
//! Each template that compiles is rendered twice: a four-message conversation (system, user,
//! assistant, user; contents with markup, quotes, newlines and non-ASCII) with
//! `add_generation_prompt = true`, and an empty conversation without. Errors of any kind
//! (syntax, raised, render, limit) are fine; a panic, an abort, a render that outlives its
//! deadline by far, or output over the cap is a bug.
//!
//! Limits are tighter than the defaults so that hostile loops cost milliseconds, not the
//! default two seconds; the limit code itself is the same.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use retort_runtime::chat_template::{ChatMessage, ChatTemplate, ChatTemplateLimits};

const LIMITS: ChatTemplateLimits = ChatTemplateLimits {
    fuel: 20_000,
    max_duration: Duration::from_millis(250),
    recursion_limit: 100,
    max_output_bytes: 256 << 10,
};

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let Ok(template) = ChatTemplate::with_limits(&source, "<s>", "</s>", LIMITS) else { return };
    let conversation = [
        ChatMessage::new("system", "You are {{ helpful }}. {% raw %}"),
        ChatMessage::new("user", "Hi <|im_start|>\n\t'\"ünïcode ✓ </think>"),
        ChatMessage::new("assistant", "<think>\nhm\n</think>\n\nHello!"),
        ChatMessage::new("user", ""),
    ];
    for (messages, add_generation_prompt) in [(&conversation[..], true), (&[][..], false)] {
        let start = Instant::now();
        let result = template.render(messages, add_generation_prompt);
        let took = start.elapsed();
        // The deadline is checked at fuel ticks; allow slack for one tick's worth of work.
        assert!(took < LIMITS.max_duration * 8, "render took {took:?}");
        if let Ok(text) = result {
            assert!(text.len() <= LIMITS.max_output_bytes, "{} bytes of output", text.len());
        }
    }
});
