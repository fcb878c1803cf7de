//! Chat templates: render a GGUF's `tokenizer.chat_template` (Jinja) the way transformers'
//! `apply_chat_template(..., tokenize=False)` does, with minijinja.
//!
//! transformers (`utils/chat_template_utils.py`, `_compile_jinja_template` and
//! `render_jinja_template`) compiles the template in a jinja2 `ImmutableSandboxedEnvironment`
//! with `trim_blocks=True`, `lstrip_blocks=True` and the `loopcontrols` extension, replaces the
//! `tojson` filter with `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)` (no HTML escaping), adds the globals `raise_exception(msg)`,
//! `strftime_now(fmt)`, `dict` and `namespace`, and renders with `messages`, `tools=None`,
//! `documents=None`, `add_generation_prompt` and the tokenizer's special tokens (`bos_token`,
//! `eos_token`). jinja2's defaults also apply: one trailing newline of the template is dropped,
//! undefined values print as nothing, and values print as Python's `str()` does (`None`,
//! `True`, `[1, 'a']`). This module sets minijinja up the same way; Python's string and dict
//! methods (`.strip()`, `.split()`, `.startswith()`, `.items()`, ...) come from
//! minijinja-contrib's pycompat, negative indexing (`x.split('</think>')[-1]`) and
//! `namespace()` are minijinja built-ins.
//!
//! Where minijinja's semantics differ from jinja2's in ways real templates hit, the template
//! source is rewritten before compiling (never adding or removing a line): newlines are
//! normalized, string literals get Python's escapes (`\<newline>` continuation, `\/`, `\a`,
//! `\v`, `\U...`), and a `for` over `none` fails as Python's does (Phi-4-mini's template
//! loops over `tools`, which transformers passes as `None`).
//!
//! Templates are untrusted input. Rendering is bounded by [`ChatTemplateLimits`]: every
//! for-loop iteration (its body and its `if` filter) and every macro or call-block body costs one
//! unit of fuel, a render also stops at a wall-clock deadline, nesting is bounded by a recursion
//! limit, and the output is capped. minijinja's own instruction fuel needs its `fuel` cargo
//! feature, which this workspace does not enable, so the fuel here is metered by instrumenting
//! the template source: a `{% if __retort_tick() %}{% endif %}` is spliced in after each
//! `for`/`macro`/`call` tag (carrying the tag's whitespace-control modifier, so trimming is
//! unchanged) and the `for` filter becomes `if __retort_tick() and (COND)`. No newline is added,
//! so error line numbers are those of the original template.

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use minijinja::value::{Enumerator, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

const TEMPLATE_NAME: &str = "chat_template";
const TICK_FN: &str = "__retort_tick";
const ITER_FN: &str = "__retort_iter";
const BUDGET_TEMP: &str = "__retort_budget";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Resource limits for rendering an untrusted template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTemplateLimits {
    /// Loop iterations plus macro/call-block invocations allowed in one render.
    pub fuel: u64,
    /// Wall-clock time allowed for one render.
    pub max_duration: Duration,
    /// Maximum nesting depth (minijinja's recursion limit; a macro call costs several levels).
    pub recursion_limit: usize,
    /// Maximum size of the rendered text, in bytes.
    pub max_output_bytes: usize,
}

impl Default for ChatTemplateLimits {
    fn default() -> Self {
        ChatTemplateLimits {
            fuel: 1_000_000,
            max_duration: Duration::from_secs(2),
            recursion_limit: 100,
            max_output_bytes: 16 << 20,
        }
    }
}

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplateErrorKind {
    /// The template does not parse.
    Syntax,
    /// The template called `raise_exception(message)`.
    Raised,
    /// Rendering failed (undefined operation, bad filter argument, ...).
    Render,
    /// Fuel, deadline, recursion or output limit reached.
    Limit,
}

/// The one error type of this module.
#[derive(Debug, Clone)]
pub struct ChatTemplateError {
    kind: ChatTemplateErrorKind,
    line: Option<usize>,
    message: String,
}

impl ChatTemplateError {
    pub fn kind(&self) -> ChatTemplateErrorKind {
        self.kind
    }
    /// 1-based line of the template the error points at, where known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
    /// The bare message (for `Raised`: the text the template passed to `raise_exception`).
    pub fn message(&self) -> &str {
        &self.message
    }

    fn limit(message: String) -> ChatTemplateError {
        ChatTemplateError {
            kind: ChatTemplateErrorKind::Limit,
            line: None,
            message,
        }
    }

    fn from_minijinja(err: &Error, kind: ChatTemplateErrorKind) -> ChatTemplateError {
        // Errors raised by our own functions carry a typed source.
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(s) = source {
            if let Some(raised) = s.downcast_ref::<Raised>() {
                return ChatTemplateError {
                    kind: ChatTemplateErrorKind::Raised,
                    line: err.line(),
                    message: raised.0.clone(),
                };
            }
            if let Some(limit) = s.downcast_ref::<LimitHit>() {
                return ChatTemplateError {
                    kind: ChatTemplateErrorKind::Limit,
                    line: err.line(),
                    message: limit.0.clone(),
                };
            }
            source = s.source();
        }
        let kind = match err.kind() {
            ErrorKind::SyntaxError if kind == ChatTemplateErrorKind::Syntax => kind,
            ErrorKind::SyntaxError => ChatTemplateErrorKind::Syntax,
            _ if err.detail().is_some_and(|d| d.contains("recursion limit")) => {
                ChatTemplateErrorKind::Limit
            }
            _ => kind,
        };
        let message = match err.detail() {
            Some(detail) => format!("{}: {}", err.kind(), detail),
            None => err.kind().to_string(),
        };
        ChatTemplateError {
            kind,
            line: err.line(),
            message,
        }
    }
}

impl fmt::Display for ChatTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ChatTemplateErrorKind::Syntax => "chat template syntax error",
            ChatTemplateErrorKind::Raised => "chat template raised an exception",
            ChatTemplateErrorKind::Render => "chat template render error",
            ChatTemplateErrorKind::Limit => "chat template exceeded a limit",
        };
        match self.line {
            Some(line) => write!(f, "{what} at line {line}: {}", self.message),
            None => write!(f, "{what}: {}", self.message),
        }
    }
}

impl std::error::Error for ChatTemplateError {}

/// Source of a minijinja error raised by `raise_exception`.
#[derive(Debug)]
struct Raised(String);
impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Raised {}

/// Source of a minijinja error raised when a limit is hit.
#[derive(Debug)]
struct LimitHit(String);
impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for LimitHit {}

fn limit_error(msg: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(LimitHit(msg))
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    limits: ChatTemplateLimits,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` with the default limits.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        ChatTemplate::with_limits(source, bos_token, eos_token, ChatTemplateLimits::default())
    }

    /// Compiles `source` with explicit resource limits.
    pub fn with_limits(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        limits: ChatTemplateLimits,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        // Syntax errors are reported against the template as written.
        let plain = new_environment(limits);
        plain
            .template_from_str(source)
            .map_err(|e| ChatTemplateError::from_minijinja(&e, ChatTemplateErrorKind::Syntax))?;

        let instrumented = instrument(source);
        let mut env = new_environment(limits);
        env.add_template_owned(TEMPLATE_NAME, instrumented)
            .map_err(|e| {
                let mut err = ChatTemplateError::from_minijinja(&e, ChatTemplateErrorKind::Syntax);
                err.message = format!(
                    "internal error: instrumented template does not compile: {}",
                    err.message
                );
                err
            })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            limits,
        })
    }

    pub fn limits(&self) -> ChatTemplateLimits {
        self.limits
    }

    /// Renders the conversation, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_object(OrderedMap(vec![
                    (Value::from("role"), Value::from(m.role.as_str())),
                    (Value::from("content"), Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let ctx = minijinja::context! {
            messages => messages,
            tools => Value::from(()),
            documents => Value::from(()),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::from_minijinja(&e, ChatTemplateErrorKind::Render))?;
        let overflow = AtomicBool::new(false);
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.limits.max_output_bytes,
            overflow: &overflow,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => {}
            Err(_) if overflow.load(Ordering::Relaxed) => {
                return Err(ChatTemplateError::limit(format!(
                    "output exceeds {} bytes",
                    self.limits.max_output_bytes
                )))
            }
            Err(e) => {
                return Err(ChatTemplateError::from_minijinja(
                    &e,
                    ChatTemplateErrorKind::Render,
                ))
            }
        }
        String::from_utf8(out.buf).map_err(|_| ChatTemplateError {
            kind: ChatTemplateErrorKind::Render,
            line: None,
            message: "output is not valid UTF-8".into(),
        })
    }
}

struct CappedWriter<'a> {
    buf: Vec<u8>,
    cap: usize,
    overflow: &'a AtomicBool,
}

impl io::Write for CappedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.overflow.store(true, Ordering::Relaxed);
            return Err(io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Environment
// ------------------------------------------------------------------------------------------------

fn new_environment(limits: ChatTemplateLimits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_recursion_limit(limits.recursion_limit);
    env.set_debug(false);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(python_formatter);
    env.add_filter("tojson", tojson_filter);
    env.add_filter("string", |value: &Value| Value::from(py_str(value)));
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_function(TICK_FN, move |state: &State| tick(state, limits));
    env.add_function(ITER_FN, iterable);
    env
}

/// Python's methods on str/dict/list (minijinja-contrib's pycompat), with `str.title()` done
/// as Python does it (title-case mapping, e.g. `'ß'.title() == 'Ss'`).
fn python_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if method == "title" && args.is_empty() {
        if let Some(s) = value.as_str() {
            return Ok(Value::from(py_title(s)));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// CPython's `str.title()`: a cased character after an uncased one is title-cased, every
/// other cased character is lower-cased.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for c in s.chars() {
        if previous_is_cased {
            out.extend(c.to_lowercase());
        } else {
            match c {
                // Characters whose title case differs from their upper case.
                'ß' => out.push_str("Ss"),
                'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
                'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
                'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
                'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
                'ﬀ' => out.push_str("Ff"),
                'ﬁ' => out.push_str("Fi"),
                'ﬂ' => out.push_str("Fl"),
                'ﬃ' => out.push_str("Ffi"),
                'ﬄ' => out.push_str("Ffl"),
                'ﬅ' | 'ﬆ' => out.push_str("St"),
                c => out.extend(c.to_uppercase()),
            }
        }
        previous_is_cased =
            c.is_lowercase() || c.is_uppercase() || matches!(c, 'ǅ' | 'ǈ' | 'ǋ' | 'ǲ');
    }
    out
}

fn raise_exception(message: Value) -> Result<Value, Error> {
    let text = match message.as_str() {
        Some(s) => s.to_owned(),
        None => py_str(&message),
    };
    Err(Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
}

/// What a `for` loop iterates: the value itself, or a tuple (`for x in a, b`) as a list.
/// Python cannot iterate `None` (`'NoneType' object is not iterable`), minijinja can; a
/// template that loops over `tools` when none are given fails in transformers, so it fails here.
fn iterable(args: Rest<Value>) -> Result<Value, Error> {
    let mut args = args.0;
    if args.len() == 1 {
        let value = args.pop().unwrap_or_default();
        if value.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "'NoneType' object is not iterable",
            ));
        }
        return Ok(value);
    }
    Ok(Value::from(args))
}

/// Per-render fuel and deadline, kept in the render state's temps (shared with macro calls).
#[derive(Debug)]
struct Budget {
    start: Instant,
    used: AtomicU64,
}
impl Object for Budget {}

fn tick(state: &State, limits: ChatTemplateLimits) -> Result<bool, Error> {
    let budget = state.get_or_set_temp_object(BUDGET_TEMP, || Budget {
        start: Instant::now(),
        used: AtomicU64::new(0),
    });
    let used = budget.used.fetch_add(1, Ordering::Relaxed) + 1;
    if used > limits.fuel {
        return Err(limit_error(format!(
            "more than {} loop iterations or macro calls",
            limits.fuel
        )));
    }
    // Checking the clock is cheap next to a template instruction, but not free.
    if used & 63 == 0 && budget.start.elapsed() > limits.max_duration {
        return Err(limit_error(format!(
            "rendering took longer than {:?}",
            limits.max_duration
        )));
    }
    Ok(true)
}

// ------------------------------------------------------------------------------------------------
// Values as Python sees them
// ------------------------------------------------------------------------------------------------

/// A string-keyed map that keeps insertion order (Python dict order) for iteration and
/// `tojson`; minijinja's own maps sort their keys when `preserve_order` is off.
#[derive(Debug)]
struct OrderedMap(Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// jinja2 prints `{{ x }}` as Python's `str(x)`.
fn python_formatter(
    out: &mut minijinja::Output,
    _state: &State,
    value: &Value,
) -> Result<(), Error> {
    let text = py_str(value);
    out.write_str(&text)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "could not write output"))
}

fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut s = String::new();
            py_repr(value, &mut s, 0);
            s
        }
    }
}

fn py_repr(value: &Value, out: &mut String, depth: usize) {
    if depth > 64 {
        out.push_str("...");
        return;
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                out.push_str(&py_float_repr(
                    f64::try_from(value.clone()).unwrap_or(f64::NAN),
                ));
            }
        }
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(iter) = value.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out, depth + 1);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = value.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out, depth + 1);
                    out.push_str(": ");
                    py_repr(&value.get_item(&key).unwrap_or_default(), out, depth + 1);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double one.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `repr(float)` (also what `json.dumps` writes, apart from nan/inf).
fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Shortest round-trip digits and the decimal exponent.
    let sci = format!("{:e}", x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut s = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                s.push_str(&digits);
                s.push_str(&"0".repeat(int_len - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..int_len]);
                s.push('.');
                s.push_str(&digits[int_len..]);
            }
        } else {
            s.push_str("0.");
            s.push_str(&"0".repeat((-exp - 1) as usize));
            s.push_str(&digits);
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    s
}

// ------------------------------------------------------------------------------------------------
// tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
// ------------------------------------------------------------------------------------------------

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn tojson_filter(value: &Value, args: Rest<Value>) -> Result<Value, Error> {
    let bad = |msg: String| Error::new(ErrorKind::InvalidOperation, format!("tojson: {msg}"));
    let mut positional: Vec<Value> = args.0;
    let mut named: Vec<(String, Value)> = Vec::new();
    if positional.last().is_some_and(Value::is_kwargs) {
        let kwargs = positional.pop().unwrap_or_default();
        for key in kwargs.try_iter()? {
            let v = kwargs.get_item(&key)?;
            named.push((key.as_str().unwrap_or_default().to_owned(), v));
        }
    }
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(bad(format!(
            "takes at most {} arguments, got {}",
            NAMES.len(),
            positional.len()
        )));
    }
    let mut slots: [Option<Value>; 4] = Default::default();
    for (i, v) in positional.into_iter().enumerate() {
        slots[i] = Some(v);
    }
    for (name, v) in named {
        let Some(i) = NAMES.iter().position(|n| *n == name) else {
            return Err(bad(format!("unexpected keyword argument '{name}'")));
        };
        if slots[i].is_some() {
            return Err(bad(format!("got multiple values for argument '{name}'")));
        }
        slots[i] = Some(v);
    }
    let [ensure_ascii, indent, separators, sort_keys] = slots;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) if v.is_integer() => {
            Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 64) as usize))
        }
        Some(v) => {
            return Err(bad(format!(
                "indent must be an int or a string, got {}",
                py_str(&v)
            )))
        }
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() {
        (",".to_owned(), ": ".to_owned())
    } else {
        (", ".to_owned(), ": ".to_owned())
    };
    if let Some(sep) = separators.filter(|v| !v.is_none() && !v.is_undefined()) {
        let parts: Vec<Value> = sep.try_iter().map(|it| it.collect()).unwrap_or_default();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                item_sep = a.as_str().unwrap_or_default().to_owned();
                key_sep = b.as_str().unwrap_or_default().to_owned();
            }
            _ => {
                return Err(bad(
                    "separators must be an (item_separator, key_separator) pair of strings".into(),
                ))
            }
        }
    }
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

fn write_json(
    value: &Value,
    opts: &JsonOptions,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    if level > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: nesting too deep",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let x = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                out.push_str(&if x.is_nan() {
                    "NaN".to_owned()
                } else if x.is_infinite() {
                    if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
                } else {
                    py_float_repr(x)
                });
            }
        }
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                write_json(item, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&key, opts, level + 1, &mut s)?;
                        s
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!(
                                "tojson: keys must be str, int, float, bool or None, not {}",
                                key.kind()
                            ),
                        ))
                    }
                };
                entries.push((key, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                json_str(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                write_json(item, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: Object of type Undefined is not JSON serializable",
            ))
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ------------------------------------------------------------------------------------------------
// strftime_now: datetime.now().strftime(format), in UTC
// ------------------------------------------------------------------------------------------------

fn strftime_now(format: &str) -> Result<Value, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime_utc(format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn strftime_utc(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; 0 = Monday
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[month as usize - 1] + day + u32::from(is_leap && month > 2);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's "%-d" (no padding), which Python passes through on Linux.
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{year}");
            }
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('m') => num(&mut out, i64::from(month), 2),
            Some('d') => num(&mut out, i64::from(day), 2),
            Some('e') => {
                let _ = write!(out, "{day:>2}");
            }
            Some('j') => num(&mut out, i64::from(yday), 3),
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('u') => {
                let _ = write!(out, "{}", weekday + 1);
            }
            Some('w') => {
                let _ = write!(out, "{}", (weekday + 1) % 7);
            }
            Some('F') => {
                let _ = write!(out, "{year:04}-{month:02}-{day:02}");
            }
            Some('T') => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            Some('D') => {
                let _ = write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100));
            }
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Fuel instrumentation of the template source
// ------------------------------------------------------------------------------------------------

/// Rewrites `source` so that minijinja evaluates it as jinja2 would, and meters it (see the
/// module docs):
/// * newlines are normalized to `\n`, as jinja2's lexer does for template data and strings;
/// * string literals inside tags get Python's escape semantics (see [`fix_string_literals`]);
/// * `for` iterables go through `__retort_iter(...)`, which rejects `none` as Python does;
/// * `for` bodies, `for` filters, macro and call-block bodies tick the fuel meter.
///
/// Text, comments and raw blocks are copied unchanged; no line is added or removed.
fn instrument(source: &str) -> String {
    let normalized;
    let source = if source.contains('\r') {
        normalized = source.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        source
    };
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len() + 256);
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(rel) = source[pos..].find('{') else {
            out.push_str(&source[pos..]);
            break;
        };
        let start = pos + rel;
        out.push_str(&source[pos..start]);
        match bytes.get(start + 1) {
            Some(b'#') => {
                let end = source[start + 2..]
                    .find("#}")
                    .map_or(bytes.len(), |i| start + 2 + i + 2);
                out.push_str(&source[start..end]);
                pos = end;
            }
            Some(b'{') => {
                let end = scan_tag(source, start + 2, "}}").map_or(bytes.len(), |t| t.end);
                out.push_str(&fix_string_literals(&source[start..end]));
                pos = end;
            }
            Some(b'%') => {
                let Some(tag) = scan_tag(source, start + 2, "%}") else {
                    out.push_str(&source[start..]);
                    break;
                };
                let keyword = tag.names.first().map(|n| &source[n.clone()]);
                // (offset, text) insertions into the tag, in increasing offset order.
                let mut inserts: Vec<(usize, String)> = Vec::new();
                let mut tick_after = false;
                match keyword {
                    Some("raw") => {
                        let end = find_endraw(source, tag.end).unwrap_or(bytes.len());
                        out.push_str(&source[start..end]);
                        pos = end;
                        continue;
                    }
                    Some("for") => {
                        // `for TARGET in ITER [if COND] [recursive]`
                        let names: Vec<&str> =
                            tag.names.iter().map(|n| &source[n.clone()]).collect();
                        let last = names.len() - 1;
                        let recursive = (last > 0
                            && names[last] == "recursive"
                            && tag.names[last].end == tag.content_end_trimmed)
                            .then(|| tag.names[last].start);
                        if let Some(i) = names.iter().position(|n| *n == "in") {
                            let if_idx = names[i + 1..]
                                .iter()
                                .position(|n| *n == "if")
                                .map(|j| i + 1 + j)
                                .filter(|&j| Some(tag.names[j].start) != recursive);
                            let tail = recursive.unwrap_or(tag.content_end);
                            let iter_end = if_idx.map_or(tail, |j| tag.names[j].start);
                            inserts.push((tag.names[i].end, format!(" {ITER_FN}(")));
                            inserts.push((iter_end, ") ".to_owned()));
                            if let Some(j) = if_idx {
                                inserts.push((tag.names[j].end, format!(" {TICK_FN}() and (")));
                                inserts.push((tail, ") ".to_owned()));
                            }
                        }
                        tick_after = true;
                    }
                    Some("macro") | Some("call") => tick_after = true,
                    _ => {}
                }
                let mut at = start;
                for (offset, text) in inserts {
                    out.push_str(&fix_string_literals(&source[at..offset]));
                    out.push_str(&text);
                    at = offset;
                }
                out.push_str(&fix_string_literals(&source[at..tag.end]));
                if tick_after {
                    push_tick(&mut out, tag.modifier);
                }
                pos = tag.end;
            }
            _ => {
                out.push('{');
                pos = start + 1;
            }
        }
    }
    out
}

/// Gives the string literals in a piece of tag source Python's escape semantics (jinja2
/// decodes literals with the `unicode-escape` codec) where minijinja's differ: `\<newline>` is
/// a line continuation, `\a` and `\v` are control characters, `\UXXXXXXXX` is a code point,
/// and `\/` is not an escape. Line continuations become `("..." ~<newline>"...")`, so the
/// line count is kept. Literals without such escapes are copied unchanged.
fn fix_string_literals(piece: &str) -> String {
    let bytes = piece.as_bytes();
    let mut out = String::with_capacity(piece.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let q = bytes[i];
        if q != b'\'' && q != b'"' {
            i += 1;
            continue;
        }
        let lit_start = i;
        i += 1;
        let mut needs_fix = false;
        while i < bytes.len() && bytes[i] != q {
            if bytes[i] == b'\\' {
                if matches!(bytes.get(i + 1), Some(b'\n' | b'a' | b'v' | b'U' | b'/')) {
                    needs_fix = true;
                }
                i += 1;
            }
            i += 1;
        }
        let lit_end = (i + 1).min(bytes.len());
        i = lit_end;
        if !needs_fix || lit_end - lit_start < 2 || bytes[lit_end - 1] != q {
            continue;
        }
        out.push_str(&piece[copied..lit_start]);
        copied = lit_end;
        let quote = q as char;
        let body = &piece[lit_start + 1..lit_end - 1];
        let mut segments = vec![String::new()];
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            let seg = segments.last_mut().expect("one segment");
            if c != '\\' {
                seg.push(c);
                continue;
            }
            match chars.next() {
                Some('\n') => segments.push(String::new()),
                Some('a') => seg.push_str("\\x07"),
                Some('v') => seg.push_str("\\x0b"),
                Some('/') => seg.push_str("\\\\/"),
                Some('U') => {
                    let hex: String = chars.clone().take(8).collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(ch) if hex.len() == 8 => {
                            for _ in 0..8 {
                                chars.next();
                            }
                            if ch == quote || ch == '\\' {
                                seg.push('\\');
                            }
                            seg.push(ch);
                        }
                        _ => seg.push_str("\\U"),
                    }
                }
                Some(d) => {
                    seg.push('\\');
                    seg.push(d);
                }
                None => seg.push('\\'),
            }
        }
        if segments.len() == 1 {
            let _ = write!(out, "{quote}{}{quote}", segments[0]);
        } else {
            out.push('(');
            for (k, seg) in segments.iter().enumerate() {
                if k > 0 {
                    out.push_str("~\n");
                }
                let _ = write!(out, "{quote}{seg}{quote}");
            }
            out.push(')');
        }
    }
    out.push_str(&piece[copied..]);
    out
}

fn push_tick(out: &mut String, modifier: Option<char>) {
    let m = modifier.map(String::from).unwrap_or_default();
    let _ = write!(out, "{{% if {TICK_FN}() %}}{{% endif {m}%}}");
}

struct Tag {
    /// Byte offset just past the closing delimiter.
    end: usize,
    /// Byte offset of the closing delimiter (before any `-`/`+` modifier).
    content_end: usize,
    /// `content_end` with trailing whitespace removed.
    content_end_trimmed: usize,
    /// `-` or `+` before the closing delimiter.
    modifier: Option<char>,
    /// Byte ranges of the identifiers at bracket depth 0, in order.
    names: Vec<std::ops::Range<usize>>,
}

/// Scans a `{{ ... }}` or `{% ... %}` from `from` (just past the opening delimiter) to its
/// closing delimiter, skipping string literals and tracking brackets.
fn scan_tag(source: &str, from: usize, close: &str) -> Option<Tag> {
    let bytes = source.as_bytes();
    let close = close.as_bytes();
    let mut i = from;
    if matches!(bytes.get(i), Some(b'-') | Some(b'+')) {
        i += 1;
    }
    let mut depth = 0usize;
    let mut names = Vec::new();
    while i < bytes.len() {
        let b = bytes[i];
        if depth == 0
            && (bytes[i..].starts_with(close)
                || (b == b'-' || b == b'+') && bytes[i + 1..].starts_with(close))
        {
            let (modifier, content_end) = if b == b'-' || b == b'+' {
                (Some(b as char), i)
            } else {
                (None, i)
            };
            let end = if modifier.is_some() {
                i + 1 + close.len()
            } else {
                i + close.len()
            };
            let content_end_trimmed = from + source[from..content_end].trim_end().len();
            return Some(Tag {
                end,
                content_end,
                content_end_trimmed,
                modifier,
                names,
            });
        }
        match b {
            b'\'' | b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b if b == b'_' || b.is_ascii_alphabetic() => {
                let s = i;
                while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                // Attribute names (`loop.index`) are not keywords.
                let after_dot = source[..s].trim_end().ends_with('.');
                if depth == 0 && !after_dot {
                    names.push(s..i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// End of the `{% endraw %}` tag that closes a raw block starting at `from`.
fn find_endraw(source: &str, from: usize) -> Option<usize> {
    let mut pos = from;
    while let Some(rel) = source[pos..].find("{%") {
        let start = pos + rel;
        if let Some(tag) = scan_tag(source, start + 2, "%}") {
            if tag.names.first().map(|n| &source[n.clone()]) == Some("endraw") {
                return Some(tag.end);
            }
        }
        pos = start + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs
            .iter()
            .map(|(r, c)| ChatMessage::new(*r, *c))
            .collect()
    }

    fn render(src: &str, m: &[(&str, &str)], agp: bool) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&msgs(m), agp)
    }

    #[test]
    fn syntax_error_reports_line() {
        let err = ChatTemplate::new(
            "line one\n{% for m in messages %}\n{{ m.content }\n",
            "",
            "",
        )
        .unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Syntax);
        assert_eq!(err.line(), Some(3), "{err}");
        assert!(
            err.to_string()
                .starts_with("chat template syntax error at line 3"),
            "{err}"
        );
        let err = ChatTemplate::new("{% if x %}never closed", "", "").unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Syntax, "{err}");
    }

    #[test]
    fn raise_exception_surfaces_its_message() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}ok";
        assert_eq!(render(src, &[("user", "hi")], false).unwrap(), "ok");
        let err = render(src, &[("system", "hi")], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Raised);
        assert_eq!(
            err.message(),
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
        assert!(
            err.to_string()
                .contains("Conversation roles must alternate"),
            "{err}"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().contains("raised an exception"));
    }

    #[test]
    fn nested_loops_without_output_run_out_of_fuel() {
        let src =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let t0 = Instant::now();
        let err = render(src, &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10));
        // Loop filters are metered too.
        let src = "{% for a in range(100000) %}{% for b in range(100000) if b < 0 %}{% endfor %}{% endfor %}";
        assert_eq!(
            render(src, &[], false).unwrap_err().kind(),
            ChatTemplateErrorKind::Limit
        );
    }

    #[test]
    fn exponential_macro_recursion_is_stopped() {
        let src = "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}";
        let err = render(src, &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit, "{err}");
        let src = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}";
        let err = render(src, &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit, "{err}");
    }

    #[test]
    fn deadline_stops_slow_loops() {
        let limits = ChatTemplateLimits {
            fuel: u64::MAX,
            max_duration: Duration::from_millis(200),
            ..Default::default()
        };
        let src = "{% set big = range(100000)|list %}{% for a in big %}{% set s = big|sort %}{% endfor %}";
        let t = ChatTemplate::with_limits(src, "", "", limits).unwrap();
        let t0 = Instant::now();
        let err = t.render(&[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn huge_output_is_capped() {
        let src = "{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}";
        let err = render(src, &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit);
        assert!(err.to_string().contains("output exceeds"), "{err}");
    }

    #[test]
    fn instrumentation_keeps_whitespace_control() {
        let src = "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n{%- for m in messages -%}\n\n [{{ m.content }}]  {%- endfor %}\n{% for m in messages if m.role != 'x' recursive %}\n{{ loop.index }}{% endfor %}\n";
        let expected = "  user\n  assistant\n[a][b]12";
        assert_eq!(
            render(src, &[("user", "a"), ("assistant", "b")], false).unwrap(),
            expected
        );
        // Tags inside strings, comments and raw blocks are left alone.
        let src = "{# {% for x in y %} #}{{ '{% for %}' }}{% raw %}{% for x in y %}{% endraw %}";
        assert_eq!(instrument(src), src);
        assert_eq!(
            render(src, &[], false).unwrap(),
            "{% for %}{% for x in y %}"
        );
    }

    #[test]
    fn python_semantics() {
        let r = |src: &str| {
            render(
                src,
                &[
                    ("user", "  hi there  "),
                    ("assistant", "<think>x</think>\n\nanswer"),
                ],
                true,
            )
            .unwrap()
        };
        assert_eq!(
            r("{{ messages[0].content.strip() }}|{{ messages[0]['content'].split() }}"),
            "hi there|['hi', 'there']"
        );
        assert_eq!(
            r("{{ messages[-1].content.split('</think>')[-1].lstrip() }}"),
            "answer"
        );
        assert_eq!(r("{{ messages[1].content.startswith('<think>') }} {{ none }} {{ 1.0 }} {{ [1, 'a', none, true] }}"), "True None 1.0 [1, 'a', None, True]");
        assert_eq!(
            r("{{ messages[0] }}"),
            "{'role': 'user', 'content': '  hi there  '}"
        );
        assert_eq!(r("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.last %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"), "1");
        assert_eq!(r("{% for m in messages %}{% if m.role == 'user' %}{% continue %}{% endif %}{{ m.role }}{% endfor %}"), "assistant");
        assert_eq!(
            r("{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}{{ tools is none }}"),
            "<s></s>TrueTrue"
        );
        assert_eq!(
            r("{% for k, v in messages[0].items() %}{{ k }}={{ v|trim }};{% endfor %}"),
            "role=user;content=hi there;"
        );
        assert_eq!(
            r("{{ undefined_thing }}|{{ messages[5] is defined }}"),
            "|False"
        );
        assert_eq!(
            r("{{ none|string }} {{ [true]|string }} {{ 'Don\\'t «ßa»'.title() }}"),
            "None [True] Don'T «Ssa»"
        );
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let r = |src: &str| render(src, &[("user", "é \"q\" <b>&'\n")], false).unwrap();
        assert_eq!(
            r("{{ messages|tojson }}"),
            r#"[{"role": "user", "content": "é \"q\" <b>&'\n"}]"#
        );
        assert_eq!(
            r("{{ messages[0]|tojson(ensure_ascii=true) }}"),
            r#"{"role": "user", "content": "\u00e9 \"q\" <b>&'\n"}"#
        );
        assert_eq!(
            r("{{ messages[0]|tojson(indent=2) }}"),
            "{\n  \"role\": \"user\",\n  \"content\": \"é \\\"q\\\" <b>&'\\n\"\n}"
        );
        assert_eq!(
            r("{{ [1, 2.5, 1e20, none, true, [], {}]|tojson }}"),
            "[1, 2.5, 1e+20, null, true, [], {}]"
        );
        assert_eq!(r("{{ {'b': 1}|tojson(separators=(',', ':')) }}|{{ messages[0]|tojson(sort_keys=true) }}"), r#"{"b":1}|{"content": "é \"q\" <b>&'\n", "role": "user"}"#);
        assert_eq!(r("{{ '🦀'|tojson(true) }}"), r#""\ud83e\udd80""#);
    }

    #[test]
    fn python_string_literals_and_newlines() {
        let src = "{{ \"a\\\nb\" + \"c\\/d\\a\\v\\U0001F600\\d\" }}";
        assert_eq!(
            render(src, &[], false).unwrap(),
            "abc\\/d\x07\x0b\u{1F600}\\d"
        );
        let src = "line1\r\n{% if true %}\r\nA\r\n{% endif %}\r\n";
        assert_eq!(render(src, &[], false).unwrap(), "line1\nA\n");
        // A line continuation inside a literal keeps later error lines right.
        let src = "{% set s = 'x\\\ny' %}\n{{ s }}\n{{ s + 1 }}";
        assert_eq!(render(src, &[], false).unwrap_err().line(), Some(4));
    }

    #[test]
    fn iterating_none_fails_like_python() {
        let err = render("{% for t in tools %}x{% endfor %}", &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Render);
        assert!(
            err.to_string()
                .contains("'NoneType' object is not iterable"),
            "{err}"
        );
        assert!(render("{% for t in none if t %}x{% endfor %}", &[], false).is_err());
        assert_eq!(
            render("{% for t in (1, 2) %}{{ t }}{% endfor %}", &[], false).unwrap(),
            "12"
        );
        assert_eq!(
            render("{% for t in undefined_x %}x{% endfor %}ok", &[], false).unwrap(),
            "ok"
        );
    }

    #[test]
    fn str_title_like_python() {
        assert_eq!(
            py_title("don't stop «ßa» hello-WORLD ǆemal 3rd"),
            "Don'T Stop «Ssa» Hello-World ǅemal 3Rd"
        );
    }

    #[test]
    fn float_repr_like_python() {
        for (x, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (123456.789, "123456.789"),
            (-0.0001, "-0.0001"),
            (1e-5, "1e-05"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn strftime_like_python() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %-d %y %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 29 24 %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        assert!(
            render("{{ strftime_now('%Y') }}", &[], false)
                .unwrap()
                .len()
                == 4
        );
    }
}
