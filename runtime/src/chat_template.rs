//! Chat templates: render a GGUF's `tokenizer.chat_template` (Jinja) the way transformers'
//! `apply_chat_template(..., tokenize=False)` does, with minijinja.
//!
//! transformers (`utils/chat_template_utils.py`) compiles the template in a jinja2
//! `ImmutableSandboxedEnvironment` with `trim_blocks`, `lstrip_blocks` and `loopcontrols`,
//! replaces `tojson` with `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)`, adds `raise_exception(msg)` and `strftime_now(fmt)`, and renders with
//! `messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the special tokens.
//! jinja2's defaults also apply: one trailing newline of the template is dropped, undefined
//! values print as nothing, values print as Python's `str()` (`None`, `True`, `[1, 'a']`) and
//! dicts keep insertion order. Python's str/dict methods come from minijinja-contrib's pycompat.
//! Where minijinja reads template source differently from jinja2 (string escapes, newlines,
//! looping over `None`), the source is rewritten before compiling ([`jinja2_compat`]).
//!
//! Templates are untrusted: a render is bounded by [`ChatTemplateLimits`], enforced by
//! minijinja's instruction fuel and recursion limit and by a cap on the output.

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State, Value};

const TEMPLATE_NAME: &str = "chat_template";
const ITER_FN: &str = "__retort_iter";

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
    /// minijinja instructions one render may execute, macro bodies included. This bounds time
    /// only as far as single instructions are cheap: one `sort` of a 100 000-item list is one
    /// instruction.
    pub fuel: u64,
    /// Maximum nesting depth (minijinja's recursion limit; a macro call costs several levels).
    pub recursion_limit: usize,
    /// Maximum size of the rendered text, in bytes.
    pub max_output_bytes: usize,
}

impl Default for ChatTemplateLimits {
    fn default() -> Self {
        ChatTemplateLimits {
            // About 0.4 s of cheap instructions; real templates spend 30 to 1000 a message.
            fuel: 10_000_000,
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
    /// Fuel, recursion or output limit reached.
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

    fn new(err: &Error, limits: &ChatTemplateLimits) -> ChatTemplateError {
        use ChatTemplateErrorKind::{Limit, Render, Syntax};
        let raised = std::iter::successors(std::error::Error::source(err), |e| e.source())
            .find_map(|e| e.downcast_ref::<Raised>());
        let (kind, message) = match (raised, err.kind()) {
            (Some(raised), _) => (ChatTemplateErrorKind::Raised, raised.0.clone()),
            (None, ErrorKind::SyntaxError) => (Syntax, describe(err)),
            (None, ErrorKind::OutOfFuel) => (
                Limit,
                format!("more than {} template instructions", limits.fuel),
            ),
            // Only the output cap makes writing fail.
            (None, ErrorKind::WriteFailure) => (
                Limit,
                format!("output exceeds {} bytes", limits.max_output_bytes),
            ),
            _ if err.detail() == Some("recursion limit exceeded") => (Limit, describe(err)),
            _ => (Render, describe(err)),
        };
        ChatTemplateError {
            kind,
            line: err.line(),
            message,
        }
    }
}

fn describe(err: &Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
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

/// Source of the minijinja error that `raise_exception` returns, so that it can be told apart.
#[derive(Debug)]
struct Raised(String);
impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Raised {}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    limits: ChatTemplateLimits,
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
        let mut env = new_environment(&limits);
        // Syntax errors are reported against the template as written: the rewrite assumes a
        // template that parses, and could turn some broken ones into render errors.
        env.template_from_str(source)
            .map_err(|e| ChatTemplateError::new(&e, &limits))?;
        env.add_template_owned(TEMPLATE_NAME, jinja2_compat(source))
            .map_err(|e| ChatTemplateError::new(&e, &limits))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            limits,
        })
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
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        let ctx = context! {
            messages,
            tools => (),
            documents => (),
            add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: self.limits.max_output_bytes,
        };
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render_captured_to(ctx, &mut out).map(drop))
            .map_err(|e| ChatTemplateError::new(&e, &self.limits))?;
        // minijinja writes whole `str`s and the cap refuses whole writes.
        Ok(String::from_utf8(out.buf).expect("rendered text is UTF-8"))
    }
}

/// Collects the rendered text, refusing any write that would take it past `cap` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
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

fn new_environment(limits: &ChatTemplateLimits) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.recursion_limit);
    env.set_unknown_method_callback(python_methods);
    env.set_formatter(|out, _state, value| {
        out.write_str(&py_str(value))
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "could not write output"))
    });
    env.add_filter("tojson", tojson);
    env.add_filter("string", |value: &Value| Value::from(py_str(value)));
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
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
    match value.as_str() {
        Some(s) if method == "title" && args.is_empty() => Ok(Value::from(py_title(s))),
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
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
    let text = py_str(&message);
    Err(Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)))
}

/// What a `for` loop iterates (see [`jinja2_compat`]). Python cannot iterate `None`, minijinja
/// can; a template that loops over `tools` when none are given fails in transformers, so it
/// fails here.
fn iterable(value: Value) -> Result<Value, Error> {
    match value.is_none() {
        true => Err(Error::new(
            ErrorKind::InvalidOperation,
            "'NoneType' object is not iterable",
        )),
        false => Ok(value),
    }
}

// ------------------------------------------------------------------------------------------------
// Values as Python prints them
// ------------------------------------------------------------------------------------------------

/// Python's `str(x)`, which is what jinja2 prints for `{{ x }}`.
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
    // Objects may contain themselves.
    if depth > 64 {
        out.push_str("...");
        return;
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => out.push_str(&py_float_repr(
            f64::try_from(value.clone()).unwrap_or(f64::NAN),
        )),
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out, depth + 1);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out, depth + 1);
                out.push_str(": ");
                py_repr(&value.get_item(&key).unwrap_or_default(), out, depth + 1);
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

/// Python's `repr(float)` (also what `json.dumps` writes, apart from nan/inf): shortest
/// round-trip digits, positional for exponents -4..16, else `d.ddde+XX`.
fn py_float_repr(x: f64) -> String {
    if !x.is_finite() {
        let text = if x.is_nan() {
            "nan"
        } else if x > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        return text.to_owned();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        // Rust's `Display` is positional with the same shortest digits.
        let positional = x.to_string();
        match positional.contains('.') {
            true => positional,
            false => positional + ".0",
        }
    } else {
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

// ------------------------------------------------------------------------------------------------
// tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
// ------------------------------------------------------------------------------------------------

/// transformers' `tojson` (minijinja's own escapes HTML and has other arguments). Arguments
/// bind by position or keyword, as in Python.
fn tojson(value: &Value, Rest(mut args): Rest<Value>) -> Result<Value, Error> {
    let kwargs = match args.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(args.pop().unwrap_or_default())?,
        _ => Kwargs::from_iter(Vec::<(&str, Value)>::new()),
    };
    if args.len() > 4 {
        return Err(json_error(format!(
            "takes at most 4 arguments, got {}",
            args.len()
        )));
    }
    let mut positional = args.into_iter();
    let mut argument = |name: &str| -> Result<Option<Value>, Error> {
        let given = positional
            .next()
            .filter(|v| !v.is_none() && !v.is_undefined());
        match (given, kwargs.get::<Option<Value>>(name)?) {
            (Some(_), Some(_)) => Err(json_error(format!(
                "got multiple values for argument '{name}'"
            ))),
            (given, keyword) => Ok(given.or(keyword)),
        }
    };
    let ensure_ascii = argument("ensure_ascii")?;
    let indent = argument("indent")?;
    let separators = argument("separators")?;
    let sort_keys = argument("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.to_string()),
        Some(v) if v.is_integer() => {
            Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 64) as usize))
        }
        Some(v) => {
            return Err(json_error(format!(
                "indent must be an int or a string, got {}",
                py_str(&v)
            )))
        }
    };
    // Python's default item separator drops its space when indenting.
    let (item_sep, key_sep) = match separators {
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
        Some(pair) => match pair.try_iter().map(|it| it.collect::<Vec<_>>()).as_deref() {
            Ok([item, key]) if item.as_str().is_some() && key.as_str().is_some() => {
                (item.to_string(), key.to_string())
            }
            _ => {
                return Err(json_error(
                    "separators must be an (item_separator, key_separator) pair of strings".into(),
                ))
            }
        },
    };
    let json = Json {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    json.value(value, 0, &mut out)?;
    Ok(Value::from(out))
}

fn json_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {message}"))
}

struct Json {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl Json {
    fn value(&self, value: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        // Objects may contain themselves.
        if level > 128 {
            return Err(json_error("nesting too deep".into()));
        }
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&json_number(value)),
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(['[', ']'], &items, level, out, |item, out| {
                    self.value(item, level + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    entries.push((json_key(&key)?, value.get_item(&key)?));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(['{', '}'], &entries, level, out, |(key, item), out| {
                    self.string(key, out);
                    out.push_str(&self.key_sep);
                    self.value(item, level + 1, out)
                })?;
            }
            kind => {
                return Err(json_error(format!(
                    "Object of type {kind} is not JSON serializable"
                )))
            }
        }
        Ok(())
    }

    /// Writes `items` between `brackets`, one per line when indenting (Python writes `[]`
    /// and `{}` when empty).
    fn container<T>(
        &self,
        brackets: [char; 2],
        items: &[T],
        level: usize,
        out: &mut String,
        mut item: impl FnMut(&T, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(brackets[0]);
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(level + 1, out);
            item(it, out)?;
        }
        if !items.is_empty() {
            self.newline(level, out);
        }
        out.push(brackets[1]);
        Ok(())
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
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
                c if (c as u32) < 0x20 || self.ensure_ascii && (c as u32) > 0x7e => {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

fn json_number(value: &Value) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()).unwrap_or(f64::NAN) {
        x if x.is_nan() => "NaN".to_owned(),
        x if x.is_infinite() => if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned(),
        x => py_float_repr(x),
    }
}

/// A dict key as `json.dumps` converts it to a string.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::Number => Ok(json_number(key)),
        kind => Err(json_error(format!(
            "keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
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

/// Civil date (year, month, day) from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn strftime_utc(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7); // 0 = Monday; 1970-01-01 was a Thursday
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let before_month = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before_month[month as usize - 1] + day + i64::from(leap && month > 2);
    let month_name = MONTHS[month as usize - 1];
    let weekday_name = WEEKDAYS[weekday as usize];

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's `%-d` (no padding), which Python passes through on Linux.
        let unpadded = chars.next_if_eq(&'-').is_some();
        let number = |value: i64, width: usize| match unpadded {
            true => value.to_string(),
            false => format!("{value:0width$}"),
        };
        let field = match chars.next() {
            Some('Y') => year.to_string(),
            Some('y') => number(year.rem_euclid(100), 2),
            Some('m') => number(month, 2),
            Some('d') => number(day, 2),
            Some('e') => format!("{day:>2}"),
            Some('j') => number(yday, 3),
            Some('H') => number(hour, 2),
            Some('I') => number((hour + 11) % 12 + 1, 2),
            Some('M') => number(minute, 2),
            Some('S') => number(second, 2),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            Some('B') => month_name.to_owned(),
            Some('b' | 'h') => month_name[..3].to_owned(),
            Some('A') => weekday_name.to_owned(),
            Some('a') => weekday_name[..3].to_owned(),
            Some('u') => (weekday + 1).to_string(),
            Some('w') => ((weekday + 1) % 7).to_string(),
            Some('F') => format!("{year:04}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('D') => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            Some('Z') => "UTC".to_owned(),
            Some('z') => "+0000".to_owned(),
            Some('%') | None => "%".to_owned(),
            Some(other) => format!("%{}{other}", if unpadded { "-" } else { "" }),
        };
        out.push_str(&field);
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Source rewriting: where minijinja reads a template differently from jinja2
// ------------------------------------------------------------------------------------------------

/// Rewrites `source` so that minijinja reads it as jinja2 does, without adding or removing a
/// line (error lines stay those of the template as written):
/// * newlines are normalized to `\n`, as jinja2's lexer does;
/// * string literals in tags get Python's escapes ([`python_literal`]);
/// * a `for` loop's iterable goes through [`iterable`], which rejects `None` as Python does
///   (Phi-4-mini's template loops over `tools`, which transformers passes as `None`).
///
/// Text, comments and raw blocks are left alone.
fn jinja2_compat(source: &str) -> String {
    let src = source.replace("\r\n", "\n").replace('\r', "\n");
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut pos = 0;
    while let Some(i) = src[pos..].find('{') {
        let open = pos + i;
        let delimiter = src.as_bytes().get(open + 1).copied();
        if delimiter == Some(b'#') {
            pos = src[open + 2..]
                .find("#}")
                .map_or(src.len(), |j| open + 2 + j + 2);
            continue;
        }
        if !matches!(delimiter, Some(b'{' | b'%')) {
            pos = open + 1;
            continue;
        }
        let tag = scan_tag(&src, open);
        pos = (tag.close + 2).min(src.len());
        let is_block = delimiter == Some(b'%');
        match tag.words.first().map(|w| &src[w.clone()]) {
            Some("raw") if is_block => {
                pos = end_of_raw(&src, pos);
                continue;
            }
            Some("for") if is_block => {
                if let Some(iter) = for_iterable(&src, &tag) {
                    edits.push((iter.start..iter.start, format!(" {ITER_FN}(")));
                    edits.push((iter.end..iter.end, ")".to_owned()));
                }
            }
            _ => {}
        }
        for literal in tag.strings {
            if let Some(fixed) = python_literal(&src[literal.clone()]) {
                edits.push((literal, fixed));
            }
        }
    }
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(src.len() + 32 * edits.len());
    let mut copied = 0;
    for (range, text) in edits {
        out.push_str(&src[copied..range.start]);
        out.push_str(&text);
        copied = range.end;
    }
    out.push_str(&src[copied..]);
    out
}

/// A `{{ ... }}` or `{% ... %}` tag.
struct Tag {
    /// Offset of the closing delimiter; the end of the source if there is none.
    close: usize,
    /// Names and keywords outside brackets, attribute names excepted, in order.
    words: Vec<Range<usize>>,
    /// String literals, quotes included.
    strings: Vec<Range<usize>>,
}

/// Scans the tag opening at `open` as jinja2's lexer does: string literals are skipped and
/// the closing delimiter only counts outside brackets (`{{ {'a': {}}} }}`).
fn scan_tag(src: &str, open: usize) -> Tag {
    let b = src.as_bytes();
    let close: &[u8] = if b[open + 1] == b'{' { b"}}" } else { b"%}" };
    let mut tag = Tag {
        close: b.len(),
        words: Vec::new(),
        strings: Vec::new(),
    };
    let mut depth = 0usize;
    let mut i = open + 2;
    while i < b.len() {
        let start = i;
        match b[i] {
            _ if depth == 0 && b[i..].starts_with(close) => {
                tag.close = i;
                break;
            }
            quote @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                tag.strings.push(start..i);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            c if c == b'_' || c.is_ascii_alphanumeric() => {
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                if depth == 0 && !src[..start].trim_end().ends_with('.') {
                    tag.words.push(start..i);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    tag
}

/// The iterable of `{% for TARGET in ITERABLE [if CONDITION] [recursive] %}`: from after `in`
/// to the first `if` or `recursive` after it (jinja2 parses no conditional expression there),
/// or to the closing delimiter and its whitespace-control modifier.
fn for_iterable(src: &str, tag: &Tag) -> Option<Range<usize>> {
    let in_at = tag.words.iter().position(|w| &src[w.clone()] == "in")?;
    let start = tag.words[in_at].end;
    let end = tag.words[in_at + 1..]
        .iter()
        .find(|w| {
            matches!(&src[(*w).clone()], "if" | "recursive")
                && !src[start..w.start].trim().is_empty()
        })
        .map_or_else(
            || tag.close - usize::from(matches!(src.as_bytes()[tag.close - 1], b'-' | b'+')),
            |w| w.start,
        );
    Some(start..end)
}

/// Offset just past the `{% endraw %}` that ends a raw block whose body starts at `from` (jinja2
/// finds it textually, whatever the body holds).
fn end_of_raw(src: &str, from: usize) -> usize {
    let mut pos = from;
    while let Some(i) = src[pos..].find("{%") {
        pos += i + 2;
        let rest = &src[pos..];
        let rest = rest.strip_prefix(['-', '+']).unwrap_or(rest).trim_start();
        if let Some(rest) = rest.strip_prefix("endraw") {
            let rest = rest.trim_start();
            if let Some(rest) = rest
                .strip_prefix(['-', '+'])
                .unwrap_or(rest)
                .strip_prefix("%}")
            {
                return src.len() - rest.len();
            }
        }
    }
    src.len()
}

/// The string literal `literal` (quotes included) spelled so that minijinja reads it as jinja2
/// does, or `None` if it already does. jinja2 decodes literals with Python's `unicode-escape`
/// codec, where `\<newline>` continues the line, `\a` and `\v` are control characters,
/// `\UXXXXXXXX` is a code point and `\/` is not an escape; minijinja knows none of these and
/// reads `\/` as `/`. A continuation becomes `('...' ~<newline>'...')`, keeping the line count.
fn python_literal(literal: &str) -> Option<String> {
    let quote = literal.get(..1)?;
    let body = literal.strip_prefix(quote)?.strip_suffix(quote)?;
    if !body.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(literal.len() + 8);
    let mut continued = false;
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\n') => {
                let _ = write!(out, "{quote} ~\n{quote}");
                continued = true;
            }
            Some('a') => out.push_str("\\x07"),
            Some('v') => out.push_str("\\x0b"),
            Some('/') => out.push_str("\\\\/"),
            Some('U') => match code_point(chars.as_str()) {
                Some(c) => {
                    chars.nth(7);
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                None => out.push_str("\\U"),
            },
            Some(d) => {
                out.push('\\');
                out.push(d);
            }
            None => out.push('\\'),
        }
    }
    let fixed = match continued {
        true => format!("({quote}{out}{quote})"),
        false => format!("{quote}{out}{quote}"),
    };
    (fixed != literal).then_some(fixed)
}

/// The character that the eight hex digits at the start of `s` name.
fn code_point(s: &str) -> Option<char> {
    let hex = s
        .get(..8)
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
    char::from_u32(u32::from_str_radix(hex, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
    fn fuel_stops_slow_loops() {
        // Sorting the 100 000 items is one instruction: with the default fuel this would run
        // for minutes, so only a small fuel bounds the time of such a template.
        let limits = ChatTemplateLimits {
            fuel: 500,
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
    fn rewriting_keeps_whitespace_control() {
        let src = "{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n{%- for m in messages -%}\n\n [{{ m.content }}]  {%- endfor %}\n{% for m in messages if m.role != 'x' recursive %}\n{{ loop.index }}{% endfor %}\n";
        let expected = "  user\n  assistant\n[a][b]12";
        assert_eq!(
            render(src, &[("user", "a"), ("assistant", "b")], false).unwrap(),
            expected
        );
        // Tags inside strings, comments and raw blocks are left alone.
        let src = "{# {% for x in y %} #}{{ '{% for %}' }}{% raw %}{% for x in y %}{% endraw %}";
        assert_eq!(jinja2_compat(src), src);
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
