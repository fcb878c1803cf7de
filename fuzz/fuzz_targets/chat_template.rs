//! Untrusted Jinja chat templates (a GGUF's `tokenizer.chat_template`) through
//! `ChatTemplate::new` and `render`. The whole input is the template source (invalid UTF-8 is
//! replaced), so the seeds in seeds/chat_template/ are plain templates and fuzz/jinja.dict gives
//! libFuzzer the syntax.
//!
//! Each template that compiles is rendered twice: a four-message conversation (system, user,
//! assistant, user; contents with markup, quotes, newlines and non-ASCII) with
//! `add_generation_prompt = true`, and an empty conversation without. Errors of any kind
//! (syntax, raised, render, limit) are fine; a panic, an abort, output over the cap, a single
//! allocation over 256 MB (scripts/fuzz.sh passes -malloc_limit_mb=256) or a compile or render
//! that takes seconds despite the small fuel budget is a bug.
//!
//! The fuel is lower than the default so that hostile loops cost milliseconds; the limit code
//! itself is the same.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use retort_runtime::chat_template::{ChatMessage, ChatTemplate, ChatTemplateLimits};

fn limits() -> ChatTemplateLimits {
    ChatTemplateLimits { fuel: 100_000, max_output_bytes: 256 << 10, ..ChatTemplateLimits::default() }
}
/// Far more than 100 000 cheap instructions take, even instrumented and on a loaded machine.
const TOO_SLOW: Duration = Duration::from_secs(5);

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    let limits = limits();
    let start = Instant::now();
    let compiled = ChatTemplate::with_limits(&source, "<s>", "</s>", limits);
    let took = start.elapsed();
    assert!(took < TOO_SLOW, "compile took {took:?}");
    let Ok(template) = compiled else { return };
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
        assert!(took < TOO_SLOW, "render took {took:?}");
        if let Ok(text) = result {
            assert!(text.len() <= limits.max_output_bytes, "{} bytes of output", text.len());
        }
    }
});
