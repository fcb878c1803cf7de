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
//! minijinja's instruction fuel and recursion limit and by the memory guards below.
//!
//! # Memory guards
//!
//! Fuel counts instructions, and one instruction (a filter, an operator) can build gigabytes:
//! `'x' * 100000000`, `s|indent(2000000000)`, `x ~ x` a few dozen times. So every operation
//! that builds a string or a list is bounded, with `cap` = `max_output_bytes` and a list
//! counted at [`ITEM_BYTES`] an item:
//!
//! * No operation builds more than `cap` bytes, and a render builds at most
//!   [`PRODUCED_PER_OUTPUT_BYTE`] × `cap` in all (strings built by operators, filters and
//!   methods, and all printed text; the fixtures build 2 to 4 times their output). Real
//!   templates never come near; a template that keeps everything it builds holds at most that.
//! * The output, and the text captured by each `{% set %}` or `{% filter %}` block and each
//!   macro call, is refused past `cap` as it is printed.
//! * Operators: minijinja has no hook for them, so the compiled code is rewritten before each
//!   render ([`guard_instructions`], through minijinja's `unstable_machinery`, hence the exact
//!   version in Cargo.toml): `~`, `+`, `*` and slicing first call a check with their operands,
//!   raw text is printed through the formatter (which counts all printed text), and captures
//!   report where the text goes. Operators on constants would be evaluated when compiling, out
//!   of reach of the checks, so one operand of each is wrapped in an identity call first
//!   ([`unfold_constants`]); the check runs before minijinja's own operation.
//! * Filters and methods that can build more than a few times their input (`indent`,
//!   `replace`, `join`, `format`, `str.format`, `batch`, `slice`, `pprint`, turning a string
//!   into a list, ...) are refused when an upper bound of their result, computed from their
//!   arguments, exceeds what is left; every builtin filter that builds strings or lists, and
//!   every method, is counted after it runs. `tojson`, `string` and printing stop at `cap`.
//!   `debug` is removed (transformers has none).
//!
//! A refused operation is a [`ChatTemplateErrorKind::Limit`] error. The cost of the guards:
//! about 15 % more instructions (fuel), and the rewrite of the compiled code at each render.
//!
//! Not bounded:
//! * Time within one instruction, beyond what the size caps imply: comparing, sorting or
//!   searching values of up to `cap` bytes, 10 million times over, takes hours; fuel bounds the
//!   count, not the cost, of such instructions.
//! * Nesting depth: a loop can nest a list in itself a million times over
//!   (`{% set ns.x = [ns.x] %}`), and a namespace can hold itself; freeing or printing such a
//!   value overflows the stack (an abort). minijinja's own recursion is not guarded.
//! * Small allocations that are not counted: loop state, minijinja's value stack, call
//!   arguments. They are freed as the render goes on, or are a few bytes per instruction.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::machinery::{self, ast, Instruction, Instructions};
use minijinja::value::{Kwargs, Object, Rest, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State, Value};

const TEMPLATE_NAME: &str = "chat_template";
/// Names of the functions this module adds to templates start with this; a template that uses
/// it is refused, so that it cannot replace them.
const RESERVED_PREFIX: &str = "__retort";
const ITER_FN: &str = "__retort_iter";
const ID_FN: &str = "__retort_id";

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
    /// Maximum size of the rendered text, in bytes. This is also the largest string or list
    /// (at [`ITEM_BYTES`] an item) that one operation may build, and a render may build
    /// [`PRODUCED_PER_OUTPUT_BYTE`] times this in all (see the module doc).
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
    /// Fuel, recursion, output or memory limit reached.
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
        let sources = || std::iter::successors(std::error::Error::source(err), |e| e.source());
        let raised = sources().find_map(|e| e.downcast_ref::<Raised>());
        let limit = sources().find_map(|e| e.downcast_ref::<LimitExceeded>());
        let (kind, message) = match (raised, err.kind()) {
            (Some(raised), _) => (ChatTemplateErrorKind::Raised, raised.0.clone()),
            (None, _) if limit.is_some() => (Limit, limit.map(|l| l.0.clone()).unwrap_or_default()),
            (None, ErrorKind::SyntaxError) => (Syntax, describe(err)),
            (None, ErrorKind::OutOfFuel) => (
                Limit,
                format!("more than {} template instructions", limits.fuel),
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
        let parse = |source| {
            let whitespace = machinery::WhitespaceConfig {
                keep_trailing_newline: false,
                lstrip_blocks: true,
                trim_blocks: true,
            };
            machinery::parse(source, TEMPLATE_NAME, Default::default(), whitespace)
                .map_err(|e| ChatTemplateError::new(&e, &limits))
        };
        // Syntax errors are reported against the template as written: the rewrite assumes a
        // template that parses, and could turn some broken ones into render errors. (Parsing
        // only: compiling folds constant expressions, which may be huge.)
        parse(source)?;
        if let Some(at) = source.find(RESERVED_PREFIX) {
            return Err(ChatTemplateError {
                kind: ChatTemplateErrorKind::Syntax,
                line: Some(source[..at].matches('\n').count() + 1),
                message: format!("names starting with {RESERVED_PREFIX} are reserved"),
            });
        }
        let source = jinja2_compat(source);
        let source = unfold_constants(&source, &parse(&source)?);
        env.add_template_owned(TEMPLATE_NAME, source)
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
        let ctx = self.context(messages, add_generation_prompt);
        let error = |e: Error| ChatTemplateError::new(&e, &self.limits);
        let template = self.env.get_template(TEMPLATE_NAME).map_err(error)?;
        // What `Template::render` does, on the compiled code with its guards added.
        let compiled = machinery::get_compiled_template(&template);
        let instructions = guard_instructions(&compiled.instructions);
        let blocks: BTreeMap<&str, Instructions> = compiled
            .blocks
            .iter()
            .map(|(name, block)| (*name, guard_instructions(block)))
            .collect();
        let mut text = String::new();
        machinery::Vm::new(&self.env)
            .eval(
                &instructions,
                ctx,
                &blocks,
                &mut machinery::make_string_output(&mut text),
                compiled.initial_auto_escape,
            )
            .map_err(error)?;
        // The formatter refuses output past the cap as it is printed; this catches what it
        // cannot tell apart: text printed inside a recursive `loop(...)` call is captured by
        // minijinja without an instruction, and counted as output (once more when printed).
        if text.len() > self.limits.max_output_bytes {
            return Err(ChatTemplateError {
                kind: ChatTemplateErrorKind::Limit,
                line: None,
                message: format!("output exceeds {} bytes", self.limits.max_output_bytes),
            });
        }
        Ok(text)
    }

    /// What `render` renders the template with.
    fn context(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Value {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        context! {
            messages,
            tools => (),
            documents => (),
            add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Environment
// ------------------------------------------------------------------------------------------------

fn new_environment(limits: &ChatTemplateLimits) -> Environment<'static> {
    let guard = Guard::new(limits);
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.recursion_limit);
    env.set_unknown_method_callback(move |state, value, method, args| {
        python_methods(guard, state, value, method, args)
    });
    // All text a template writes comes here, raw text included (see `guard_instructions`),
    // whether it goes to the output, a `{% set %}` block or a macro's result.
    env.set_formatter(move |out, state, value| {
        let printed;
        let text = match value.as_str() {
            Some(s) if value.kind() == ValueKind::String => s,
            _ => {
                printed = py_str(value, guard.max_value)?;
                &printed
            }
        };
        guard.print(state, text.len())?;
        out.write_str(text)
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "could not write output"))
    });
    env.add_filter(
        "tojson",
        move |state: &State, value: &Value, args: Rest<Value>| {
            let json = tojson(guard.max_value, value, args)?;
            guard.charge(state, value_bytes(&json), &"filter tojson")?;
            Ok(json)
        },
    );
    env.add_filter("string", move |state: &State, value: &Value| {
        let text = py_str(value, guard.max_value)?;
        guard.charge(state, text.len(), &"filter string")?;
        Ok(Value::from(text))
    });
    env.add_function("raise_exception", move |message: Value| {
        let text = py_str(&message, guard.max_value)?;
        Err::<Value, _>(
            Error::new(ErrorKind::InvalidOperation, text.clone()).with_source(Raised(text)),
        )
    });
    env.add_function("strftime_now", strftime_now);
    env.add_function(ITER_FN, iterable);
    env.add_function(ID_FN, |value: Value| value);
    add_guards(&mut env, guard);
    env
}

/// Python's methods on str/dict/list (minijinja-contrib's pycompat), with `str.title()` done
/// as Python does it (title-case mapping, e.g. `'ß'.title() == 'Ss'`). Those that can build
/// more than their input are bounded first ([`method_bound`]).
fn python_methods(
    guard: Guard,
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let what = format_args!("method {method}");
    if let Some(bound) = method_bound(value, method, args, guard.max_value) {
        guard.check(state, bound, &what)?;
    }
    let result = match value.as_str() {
        Some(s) if method == "title" && args.is_empty() => Ok(Value::from(py_title(s))),
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }?;
    guard.charge(state, value_bytes(&result), &what)?;
    Ok(result)
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
// Memory guards
// ------------------------------------------------------------------------------------------------

/// Bytes a list item counts for against the limits (the size of a minijinja value).
pub const ITEM_BYTES: usize = std::mem::size_of::<Value>();
/// Bytes an object built by the template (a list or dict literal, a macro, a namespace) counts
/// for, besides its items.
const OBJECT_BYTES: usize = 64;
/// A render may build this many times [`ChatTemplateLimits::max_output_bytes`] of strings and
/// lists in all, its output included.
pub const PRODUCED_PER_OUTPUT_BYTE: usize = 8;

const CHECK_CONCAT: &str = "__retort_check_concat";
const CHECK_ADD: &str = "__retort_check_add";
const CHECK_MUL: &str = "__retort_check_mul";
const CHECK_SLICE: &str = "__retort_check_slice";
const CHECK_BUILT: &str = "__retort_check_built";
const CAPTURE_BEGIN: &str = "__retort_capture_begin";
const CAPTURE_END: &str = "__retort_capture_end";
const BUDGET_TEMP: &str = "__retort_budget";

/// Source of the minijinja error that a guard returns, so that it can be told apart.
#[derive(Debug)]
struct LimitExceeded(String);
impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for LimitExceeded {}

fn limit_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(LimitExceeded(message))
}

/// What one render has built (a minijinja temp, which the macros it calls share).
#[derive(Debug)]
struct Budget {
    /// Bytes of strings and lists.
    produced: AtomicUsize,
    /// Bytes printed into the output (first) and into each capture in progress: `{% set %}`
    /// and `{% filter %}` blocks and macro calls, innermost last.
    printed: Mutex<Vec<usize>>,
}

impl Object for Budget {}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            produced: AtomicUsize::new(0),
            printed: Mutex::new(vec![0]),
        }
    }
}

/// The memory limits of a template, enforced by the hooks [`add_guards`] registers.
#[derive(Debug, Clone, Copy)]
struct Guard {
    /// Largest string or list (at [`ITEM_BYTES`] an item) that one operation may build.
    max_value: usize,
    /// Most bytes of strings and lists that one render may build in all.
    max_produced: usize,
}

impl Guard {
    fn new(limits: &ChatTemplateLimits) -> Guard {
        Guard {
            max_value: limits.max_output_bytes,
            max_produced: limits
                .max_output_bytes
                .saturating_mul(PRODUCED_PER_OUTPUT_BYTE),
        }
    }

    /// Refuses an operation that would build `bytes` bytes, if that is more than one value or
    /// the rest of the render's budget may hold.
    fn check(&self, state: &State, bytes: usize, what: &dyn fmt::Display) -> Result<(), Error> {
        self.count(state, bytes, what, false)
    }

    /// [`Guard::check`], then counts the bytes against the render's budget.
    fn charge(&self, state: &State, bytes: usize, what: &dyn fmt::Display) -> Result<(), Error> {
        self.count(state, bytes, what, true)
    }

    fn count(
        &self,
        state: &State,
        bytes: usize,
        what: &dyn fmt::Display,
        add: bool,
    ) -> Result<(), Error> {
        if bytes > self.max_value {
            return Err(limit_error(format!(
                "{what} would build {bytes} bytes, more than the limit of {}",
                self.max_value
            )));
        }
        if bytes == 0 {
            return Ok(());
        }
        let budget = state.get_or_set_temp_object(BUDGET_TEMP, Budget::default);
        let before = match add {
            true => budget.produced.fetch_add(bytes, Ordering::Relaxed),
            false => budget.produced.load(Ordering::Relaxed),
        };
        if before.saturating_add(bytes) > self.max_produced {
            return Err(limit_error(format!(
                "the template built more than {} bytes of text and lists ({what})",
                self.max_produced
            )));
        }
        Ok(())
    }

    /// Counts `bytes` printed into the output or the capture in progress, refusing to take
    /// either past the limit.
    fn print(&self, state: &State, bytes: usize) -> Result<(), Error> {
        let budget = state.get_or_set_temp_object(BUDGET_TEMP, Budget::default);
        let mut printed = budget.printed.lock().unwrap_or_else(|e| e.into_inner());
        let depth = printed.len();
        let Some(target) = printed.last_mut() else {
            return Ok(());
        };
        *target = target.saturating_add(bytes);
        if *target > self.max_value {
            return Err(limit_error(match depth {
                1 => format!("output exceeds {} bytes", self.max_value),
                _ => format!(
                    "captured text (a set or filter block, or a macro's output) exceeds {} bytes",
                    self.max_value
                ),
            }));
        }
        drop(printed);
        self.charge(state, bytes, &"printed text")
    }

    /// Starts (`begin`) or ends counting the text printed into a capture.
    fn capture(&self, state: &State, begin: bool) {
        let budget = state.get_or_set_temp_object(BUDGET_TEMP, Budget::default);
        let mut printed = budget.printed.lock().unwrap_or_else(|e| e.into_inner());
        match begin {
            true => printed.push(0),
            false if printed.len() > 1 => drop(printed.pop()),
            false => {}
        }
    }
}

/// What a value counts for: a string its length, a list or map [`ITEM_BYTES`] an item (two an
/// entry); lazy sequences and scalars nothing.
fn value_bytes(value: &Value) -> usize {
    match value.kind() {
        ValueKind::String => value.as_str().map_or(0, str::len),
        ValueKind::Seq => value.len().unwrap_or(0).saturating_mul(ITEM_BYTES),
        ValueKind::Map => value.len().unwrap_or(0).saturating_mul(2 * ITEM_BYTES),
        _ => 0,
    }
}

fn is_sequence(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// How many items iterating `value` yields, where known (a string's characters).
fn item_count(value: &Value) -> usize {
    value.len().unwrap_or(0)
}

/// Counts the bytes written to it, failing once past `limit`.
struct ByteCount {
    bytes: usize,
    limit: usize,
}

impl fmt::Write for ByteCount {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes = self.bytes.saturating_add(s.len());
        match self.bytes > self.limit {
            true => Err(fmt::Error),
            false => Ok(()),
        }
    }
}

/// Length of minijinja's text of `value` (what `~` and `join` write), counted up to just past
/// `limit` (a list may hold the same list many times over).
fn display_len(value: &Value, limit: usize) -> usize {
    if let Some(s) = value.as_str() {
        return s.len();
    }
    let mut count = ByteCount { bytes: 0, limit };
    let _ = write!(count, "{value}");
    count.bytes
}

/// Length of `pprint`'s text of `value`, counted up to just past `limit`.
fn pprint_len(value: &Value, limit: usize) -> usize {
    let mut count = ByteCount { bytes: 0, limit };
    let _ = write!(count, "{value:#?}");
    count.bytes
}

/// `value` as the text a string filter or method works on: a string itself, anything else
/// its minijinja text (refused past `limit` bytes).
fn text_of(value: &Value, limit: usize) -> Result<std::borrow::Cow<'_, str>, Error> {
    if let Some(s) = value.as_str() {
        return Ok(s.into());
    }
    let len = display_len(value, limit);
    match len > limit {
        true => Err(limit_error(format!(
            "an argument's text exceeds {limit} bytes"
        ))),
        false => Ok(value.to_string().into()),
    }
}

/// Occurrences of `pattern` in `text` as `str.replace` counts them (an empty pattern matches
/// between all characters).
fn occurrences(text: &str, pattern: &str) -> usize {
    match pattern.is_empty() {
        true => text.chars().count() + 1,
        false => text.matches(pattern).count(),
    }
}

/// Items of `text.split(sep, maxsplit)`: at most one more than the separators (or runs of
/// whitespace), and than `maxsplit` when that is not negative.
fn split_count(text: &str, sep: Option<&str>, maxsplit: Option<i64>) -> usize {
    let pieces = match sep {
        Some(sep) if !sep.is_empty() => text.matches(sep).count() + 1,
        _ => text.split_whitespace().count() + 1,
    };
    match maxsplit.and_then(|m| usize::try_from(m).ok()) {
        Some(m) => pieces.min(m.saturating_add(1)),
        None => pieces,
    }
}

/// An upper bound of the length of `format` formatted with `args`, printf or `str.format`
/// style: each placeholder may print any argument as its repr (up to four times its text,
/// escaped, plus quotes), and every number in the format or the arguments may be a width or a
/// precision (a fill character is up to four bytes).
fn format_bound(format: &str, args: &[Value], limit: usize) -> usize {
    let placeholders = format.matches(['%', '{']).count();
    let widths = format
        .split(|c: char| !c.is_ascii_digit())
        .filter(|digits| !digits.is_empty())
        .map(|digits| digits.parse::<usize>().unwrap_or(usize::MAX))
        .chain(
            args.iter()
                .filter_map(|a| a.as_i64().map(|n| n.unsigned_abs() as usize)),
        )
        .fold(0usize, usize::saturating_add);
    let widest = args
        .iter()
        .map(|a| display_len(a, limit))
        .max()
        .unwrap_or(0);
    format
        .len()
        .saturating_add(widths.saturating_mul(4))
        .saturating_add(placeholders.saturating_mul(widest.saturating_mul(4).saturating_add(64)))
}

/// Length of `sep` joined between the texts of `items`' items, counted up to just past `limit`.
fn join_bound(items: &Value, sep: &str, limit: usize) -> Option<usize> {
    let mut total = 0usize;
    for (i, item) in items.try_iter().ok()?.enumerate() {
        if i > 0 {
            total = total.saturating_add(sep.len());
        }
        total = total.saturating_add(display_len(&item, limit));
        if total > limit {
            break;
        }
    }
    Some(total)
}

/// What a builtin filter may build, beyond a few times its input.
#[derive(Debug, Clone, Copy)]
enum Builds {
    /// About its input (case mapping, escaping, trimming): the input must fit, the result
    /// is counted after it runs.
    Small,
    /// A list of at most the items of its input (the characters of a string).
    Items,
    /// A list of the items of all its arguments.
    AllItems,
    Indent,
    Replace,
    Join,
    Split,
    Lines,
    Batch,
    Slice,
    Zip,
    Format,
    Pprint,
}

/// The builtin filters that build strings or lists, guarded by [`add_guards`].
fn builtin_filters() -> Vec<(&'static str, Value, Builds)> {
    use minijinja::filters as f;
    use Builds::*;
    let escape = Value::from_function(f::escape);
    vec![
        ("escape", escape.clone(), Small),
        ("e", escape, Small),
        ("lower", Value::from_function(f::lower), Small),
        ("upper", Value::from_function(f::upper), Small),
        ("title", Value::from_function(f::title), Small),
        ("capitalize", Value::from_function(f::capitalize), Small),
        ("trim", Value::from_function(f::trim), Small),
        ("reverse", Value::from_function(f::reverse), Small),
        ("replace", Value::from_function(f::replace), Replace),
        ("join", Value::from_function(f::join), Join),
        ("split", Value::from_function(f::split), Split),
        ("lines", Value::from_function(f::lines), Lines),
        ("indent", Value::from_function(f::indent), Indent),
        ("format", Value::from_function(f::format), Format),
        ("pprint", Value::from_function(f::pprint), Pprint),
        ("batch", Value::from_function(f::batch), Batch),
        ("slice", Value::from_function(f::slice), Slice),
        ("zip", Value::from_function(f::zip), Zip),
        ("chain", Value::from_function(f::chain), AllItems),
        ("list", Value::from_function(f::list), Items),
        ("sort", Value::from_function(f::sort), Items),
        ("unique", Value::from_function(f::unique), Items),
        ("dictsort", Value::from_function(f::dictsort), Items),
        ("groupby", Value::from_function(f::groupby), Items),
        ("map", Value::from_function(f::map), Items),
        ("select", Value::from_function(f::select), Items),
        ("reject", Value::from_function(f::reject), Items),
        ("selectattr", Value::from_function(f::selectattr), Items),
        ("rejectattr", Value::from_function(f::rejectattr), Items),
    ]
}

/// An upper bound of the bytes the filter builds from `args` (the filtered value first, keyword
/// arguments last), where it may build more than a few times its input; `None` where it needs
/// none or the filter will reject its arguments anyway.
fn filter_bound(builds: Builds, args: &[Value], limit: usize) -> Result<Option<usize>, Error> {
    let (positional, kwargs) = match args.split_last() {
        Some((last, rest)) if last.is_kwargs() => (rest, Some(last)),
        _ => (args, None),
    };
    let arg = |i: usize, name: &str| {
        positional.get(i).cloned().or_else(|| {
            kwargs
                .and_then(|k| k.get_attr(name).ok())
                .filter(|v| !v.is_undefined())
        })
    };
    let Some(value) = positional.first() else {
        return Ok(None);
    };
    let items = |n: usize| n.saturating_mul(ITEM_BYTES);
    Ok(match builds {
        Builds::Small => Some(value_bytes(value)),
        Builds::Items => Some(items(item_count(value))),
        Builds::AllItems => Some(items(
            positional
                .iter()
                .map(item_count)
                .fold(0, usize::saturating_add),
        )),
        Builds::Zip => {
            let shortest = positional.iter().map(item_count).min().unwrap_or(0);
            Some(items(shortest.saturating_mul(positional.len() + 1)))
        }
        Builds::Indent => {
            let width = match arg(1, "width") {
                None => 4,
                Some(width) => match width.as_usize() {
                    Some(width) => width,
                    None => return Ok(None),
                },
            };
            let text = text_of(value, limit)?;
            let lines = text.matches('\n').count() + 1;
            Some(
                text.len()
                    .saturating_add((lines + 1).saturating_mul(width.saturating_add(1))),
            )
        }
        Builds::Replace => {
            let (Some(from), Some(to)) = (arg(1, "old"), arg(2, "new")) else {
                return Ok(None);
            };
            let text = text_of(value, limit)?;
            let from = text_of(&from, limit)?;
            let to = text_of(&to, limit)?;
            Some(
                text.len()
                    .saturating_add(occurrences(&text, &from).saturating_mul(to.len())),
            )
        }
        Builds::Join => {
            let sep = match arg(1, "d") {
                Some(sep) => text_of(&sep, limit)?.into_owned(),
                None => String::new(),
            };
            join_bound(value, &sep, limit)
        }
        Builds::Split => {
            let text = text_of(value, limit)?;
            let sep = arg(1, "split");
            let maxsplit = arg(2, "maxsplits").and_then(|m| m.as_i64());
            let pieces = split_count(&text, sep.as_ref().and_then(|s| s.as_str()), maxsplit);
            Some(items(pieces).saturating_add(text.len()))
        }
        Builds::Lines => {
            let text = text_of(value, limit)?;
            Some(items(text.matches('\n').count() + 1).saturating_add(text.len()))
        }
        Builds::Batch | Builds::Slice => {
            let Some(count) = arg(1, "count").and_then(|c| c.as_usize()) else {
                return Ok(None);
            };
            // `batch` reserves `count` items a row, `slice` `count` rows, and either may pad
            // with `count` fill items.
            let n = item_count(value);
            Some(items(
                count
                    .saturating_mul(3)
                    .saturating_add(n.saturating_mul(2))
                    .saturating_add(1),
            ))
        }
        Builds::Format => {
            let format = text_of(value, limit)?;
            Some(format_bound(&format, &args[1..], limit))
        }
        Builds::Pprint => Some(pprint_len(value, limit)),
    })
}

/// An upper bound of the bytes the pycompat method builds, for those that may build more
/// than a few times their input.
fn method_bound(value: &Value, method: &str, args: &[Value], limit: usize) -> Option<usize> {
    let s = value.as_str()?;
    let items = |n: usize| n.saturating_mul(ITEM_BYTES);
    match method {
        "replace" => {
            let (old, new) = (args.first()?.as_str()?, args.get(1)?.as_str()?);
            let mut count = occurrences(s, old);
            if let Some(max) = args.get(2).and_then(|c| c.as_i64()) {
                if let Ok(max) = usize::try_from(max) {
                    count = count.min(max);
                }
            }
            Some(s.len().saturating_add(count.saturating_mul(new.len())))
        }
        "format" => Some(format_bound(s, args, limit)),
        "join" => join_bound(args.first()?, s, limit),
        "split" => {
            let sep = args.first().and_then(|sep| sep.as_str());
            let maxsplit = args.get(1).and_then(|m| m.as_i64());
            Some(items(split_count(s, sep, maxsplit)).saturating_add(s.len()))
        }
        "splitlines" => Some(items(s.matches('\n').count() + 1).saturating_add(s.len())),
        _ => None,
    }
}

/// Registers the guarded builtin filters and functions and the checks that
/// [`guard_instructions`] calls.
fn add_guards(env: &mut Environment<'static>, guard: Guard) {
    for (name, filter, builds) in builtin_filters() {
        let what = format!("filter {name}");
        env.add_filter(name, move |state: &State, Rest(args): Rest<Value>| {
            if let Some(bound) = filter_bound(builds, &args, guard.max_value)? {
                guard.check(state, bound, &what)?;
            }
            let result = filter.call(state, &args)?;
            guard.charge(state, value_bytes(&result), &what)?;
            Ok(result)
        });
    }
    // transformers' sandbox has no `debug`, and minijinja's prints the whole state.
    env.remove_global("debug");
    let functions = [
        ("dict", Value::from_function(minijinja::functions::dict)),
        (
            "namespace",
            Value::from_function(minijinja::functions::namespace),
        ),
    ];
    for (name, function) in functions {
        let what = format!("function {name}");
        env.add_function(name, move |state: &State, Rest(args): Rest<Value>| {
            let result = function.call(state, &args)?;
            let bytes = args
                .iter()
                .map(value_bytes)
                .fold(OBJECT_BYTES, usize::saturating_add);
            guard.charge(state, bytes.max(value_bytes(&result)), &what)?;
            Ok(result)
        });
    }
    // List and dict literals and macros, after minijinja builds them.
    env.add_function(CHECK_BUILT, move |state: &State, value: Value| {
        let bytes = value_bytes(&value).saturating_add(OBJECT_BYTES);
        guard.charge(state, bytes, &"a literal")?;
        Ok(value)
    });

    env.add_function(CAPTURE_BEGIN, move |state: &State| {
        guard.capture(state, true)
    });
    env.add_function(CAPTURE_END, move |state: &State| {
        guard.capture(state, false)
    });
    // The checks run before the operation, with its operands, and give them back.
    env.add_function(
        CHECK_CONCAT,
        move |state: &State, Rest(args): Rest<Value>| {
            let bytes = args
                .iter()
                .map(|a| display_len(a, guard.max_value))
                .fold(0, usize::saturating_add);
            guard.charge(state, bytes, &"`~`")?;
            Ok(operands(args))
        },
    );
    env.add_function(CHECK_ADD, move |state: &State, Rest(args): Rest<Value>| {
        let bytes = match &args[..] {
            [a, b] => match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => a.len().saturating_add(b.len()),
                _ if is_sequence(a) && is_sequence(b) => {
                    (item_count(a) + item_count(b)).saturating_mul(ITEM_BYTES)
                }
                _ => 0,
            },
            _ => 0,
        };
        guard.charge(state, bytes, &"`+`")?;
        Ok(operands(args))
    });
    env.add_function(CHECK_MUL, move |state: &State, Rest(args): Rest<Value>| {
        let bytes = match &args[..] {
            [a, b] => match (a.as_str(), b.as_str()) {
                (Some(s), _) => b.as_usize().map_or(0, |n| s.len().saturating_mul(n)),
                (_, Some(s)) => a.as_usize().map_or(0, |n| s.len().saturating_mul(n)),
                _ => [(a, b), (b, a)]
                    .into_iter()
                    .find(|(seq, _)| is_sequence(seq))
                    .and_then(|(seq, n)| n.as_usize().map(|n| item_count(seq).saturating_mul(n)))
                    .map_or(0, |n| n.saturating_mul(ITEM_BYTES)),
            },
            _ => 0,
        };
        guard.charge(state, bytes, &"`*`")?;
        Ok(operands(args))
    });
    env.add_function(
        CHECK_SLICE,
        move |state: &State, Rest(args): Rest<Value>| {
            let bytes = match args.first() {
                Some(value) if value.as_str().is_some() => value_bytes(value),
                Some(value) if is_sequence(value) => item_count(value).saturating_mul(ITEM_BYTES),
                _ => 0,
            };
            guard.charge(state, bytes, &"slicing")?;
            Ok(operands(args))
        },
    );
}

/// `source` (which parsed as `template`) with one operand of every operator whose operands are
/// all constants wrapped in a call of [`ID_FN`], so that minijinja folds no operator at compile
/// time: `'x' * 1000000000` would otherwise be built when the template is compiled, where no
/// guard sees it. Each operation then runs, guarded, when the template renders.
fn unfold_constants(source: &str, template: &ast::Stmt) -> String {
    let mut operands = Vec::new();
    unfold_stmt(template, &mut operands);
    operands.sort_by_key(|span| span.start_offset);
    let mut out = String::with_capacity(source.len() + operands.len() * (ID_FN.len() + 2));
    let mut copied = 0;
    for span in operands {
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        if start < copied || end < start || end > source.len() {
            continue;
        }
        out.push_str(&source[copied..start]);
        let _ = write!(out, "{ID_FN}({})", &source[start..end]);
        copied = end;
    }
    out.push_str(&source[copied..]);
    out
}

/// Whether minijinja folds `expr` into a constant without evaluating an operator on two
/// constants: a literal, a list or dict of literals, or `-`/`not` of such.
fn literal_like(expr: &ast::Expr) -> bool {
    match expr {
        ast::Expr::Const(_) => true,
        ast::Expr::List(list) => list.items.iter().all(|e| matches!(e, ast::Expr::Const(_))),
        ast::Expr::Map(map) => map
            .keys
            .iter()
            .chain(&map.values)
            .all(|e| matches!(e, ast::Expr::Const(_))),
        ast::Expr::UnaryOp(op) => literal_like(&op.expr),
        _ => false,
    }
}

/// Collects into `operands` the spans to wrap in `stmt` (see [`unfold_constants`]).
fn unfold_stmt(stmt: &ast::Stmt, operands: &mut Vec<machinery::Span>) {
    use ast::Stmt as S;
    let expr = |e: &ast::Expr, operands: &mut Vec<machinery::Span>| unfold_expr(e, operands);
    let body = |stmts: &[ast::Stmt], operands: &mut Vec<machinery::Span>| {
        stmts.iter().for_each(|s| unfold_stmt(s, operands))
    };
    match stmt {
        S::Template(t) => body(&t.children, operands),
        S::EmitExpr(e) => expr(&e.expr, operands),
        S::EmitRaw(_) | S::Continue(_) | S::Break(_) => {}
        S::ForLoop(f) => {
            expr(&f.target, operands);
            expr(&f.iter, operands);
            if let Some(filter) = &f.filter_expr {
                expr(filter, operands);
            }
            body(&f.body, operands);
            body(&f.else_body, operands);
        }
        S::IfCond(c) => {
            expr(&c.expr, operands);
            body(&c.true_body, operands);
            body(&c.false_body, operands);
        }
        S::WithBlock(w) => {
            for (target, value) in &w.assignments {
                expr(target, operands);
                expr(value, operands);
            }
            body(&w.body, operands);
        }
        S::Set(s) => {
            expr(&s.target, operands);
            expr(&s.expr, operands);
        }
        S::SetBlock(s) => {
            expr(&s.target, operands);
            if let Some(filter) = &s.filter {
                expr(filter, operands);
            }
            body(&s.body, operands);
        }
        S::AutoEscape(a) => {
            expr(&a.enabled, operands);
            body(&a.body, operands);
        }
        S::FilterBlock(f) => {
            expr(&f.filter, operands);
            body(&f.body, operands);
        }
        S::Block(b) => body(&b.body, operands),
        S::Import(i) => {
            expr(&i.expr, operands);
            expr(&i.name, operands);
        }
        S::FromImport(i) => {
            expr(&i.expr, operands);
            for (name, alias) in &i.names {
                expr(name, operands);
                if let Some(alias) = alias {
                    expr(alias, operands);
                }
            }
        }
        S::Extends(e) => expr(&e.name, operands),
        S::Include(i) => expr(&i.name, operands),
        S::Macro(m) => unfold_macro(m, operands),
        S::CallBlock(c) => {
            unfold_call(&c.call, operands);
            unfold_macro(&c.macro_decl, operands);
        }
        S::Do(d) => unfold_call(&d.call, operands),
    }
}

fn unfold_macro(m: &ast::Macro, operands: &mut Vec<machinery::Span>) {
    m.args
        .iter()
        .chain(&m.defaults)
        .for_each(|e| unfold_expr(e, operands));
    m.body.iter().for_each(|s| unfold_stmt(s, operands));
}

fn unfold_call(call: &ast::Call, operands: &mut Vec<machinery::Span>) {
    unfold_expr(&call.expr, operands);
    unfold_args(&call.args, operands);
}

fn unfold_args(args: &[ast::CallArg], operands: &mut Vec<machinery::Span>) {
    for arg in args {
        match arg {
            ast::CallArg::Pos(e)
            | ast::CallArg::Kwarg(_, e)
            | ast::CallArg::PosSplat(e)
            | ast::CallArg::KwargSplat(e) => unfold_expr(e, operands),
        }
    }
}

fn unfold_expr(expr: &ast::Expr, operands: &mut Vec<machinery::Span>) {
    use ast::Expr as E;
    match expr {
        E::Var(_) | E::Const(_) => {}
        E::Slice(s) => {
            unfold_expr(&s.expr, operands);
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                unfold_expr(part, operands);
            }
        }
        E::UnaryOp(op) => unfold_expr(&op.expr, operands),
        E::BinOp(op) => {
            if literal_like(&op.left) && literal_like(&op.right) {
                operands.push(op.left.span());
            }
            unfold_expr(&op.left, operands);
            unfold_expr(&op.right, operands);
        }
        E::Compare(c) => {
            if literal_like(&c.expr) && c.ops.iter().all(|op| literal_like(&op.expr)) {
                operands.push(c.expr.span());
            }
            unfold_expr(&c.expr, operands);
            c.ops.iter().for_each(|op| unfold_expr(&op.expr, operands));
        }
        E::IfExpr(i) => {
            unfold_expr(&i.test_expr, operands);
            unfold_expr(&i.true_expr, operands);
            if let Some(e) = &i.false_expr {
                unfold_expr(e, operands);
            }
        }
        E::Filter(f) => {
            if let Some(e) = &f.expr {
                unfold_expr(e, operands);
            }
            unfold_args(&f.args, operands);
        }
        E::Test(t) => {
            unfold_expr(&t.expr, operands);
            unfold_args(&t.args, operands);
        }
        E::GetAttr(g) => unfold_expr(&g.expr, operands),
        E::GetItem(g) => {
            unfold_expr(&g.expr, operands);
            unfold_expr(&g.subscript_expr, operands);
        }
        E::Call(c) => unfold_call(c, operands),
        E::List(l) => l.items.iter().for_each(|e| unfold_expr(e, operands)),
        E::Map(m) => m
            .keys
            .iter()
            .chain(&m.values)
            .for_each(|e| unfold_expr(e, operands)),
    }
}

/// `args` as a list that `UnpackList` puts back on the stack in their order.
fn operands(mut args: Vec<Value>) -> Value {
    args.reverse();
    Value::from(args)
}

/// `code` with the memory guards added. Raw text is printed through the formatter, which
/// counts all printed text, and captures (set and filter blocks, macro bodies) tell it where
/// the text goes; `~`, `+`, `*` and slicing first call a check (`CHECK_*`) with their
/// operands, which gives them back for the operation. Jump targets are renumbered, and every
/// added instruction has the location of the one it stands for.
fn guard_instructions<'s>(code: &Instructions<'s>) -> Instructions<'s> {
    use Instruction as I;
    let len = code.len() as u32;
    let mut macro_starts: Vec<u32> = (0..len)
        .filter_map(|pc| match code.get(pc) {
            Some(I::BuildMacro(_, start, _)) => Some(*start),
            _ => None,
        })
        .collect();
    macro_starts.sort_unstable();
    let is_macro_start = |pc: u32| macro_starts.binary_search(&pc).is_ok();
    // How many instructions `guarded` puts in place of one.
    let guarded_len = |pc: u32, instr: &I| -> u32 {
        let own = match instr {
            I::EmitRaw(_) | I::BuildList(_) | I::BuildMap(_) | I::BuildMacro(..) => 2,
            I::StringConcat | I::Add | I::Mul | I::Slice => 3,
            I::BeginCapture(_) | I::EndCapture | I::Return => 3,
            _ => 1,
        };
        own + if is_macro_start(pc) { 2 } else { 0 }
    };
    let guarded = |pc: u32, instr: &I<'s>, target: &dyn Fn(u32) -> u32, out: &mut Vec<I<'s>>| {
        let call = |name: &'static str, arity: u16| I::CallFunction(name, Some(arity));
        let checked = |check: &'static str, arity: u16, op: I<'s>| {
            [call(check, arity), I::UnpackList(arity.into()), op]
        };
        if is_macro_start(pc) {
            out.extend([call(CAPTURE_BEGIN, 0), I::DiscardTop]);
        }
        match instr {
            I::EmitRaw(text) => out.extend([I::LoadConst(Value::from(*text)), I::Emit]),
            I::StringConcat => out.extend(checked(CHECK_CONCAT, 2, I::StringConcat)),
            I::Add => out.extend(checked(CHECK_ADD, 2, I::Add)),
            I::Mul => out.extend(checked(CHECK_MUL, 2, I::Mul)),
            I::Slice => out.extend(checked(CHECK_SLICE, 4, I::Slice)),
            I::BuildMacro(name, to, flags) => out.extend([
                I::BuildMacro(name, target(*to), *flags),
                call(CHECK_BUILT, 1),
            ]),
            I::BuildList(_) | I::BuildMap(_) => out.extend([instr.clone(), call(CHECK_BUILT, 1)]),
            I::BeginCapture(mode) => out.extend([
                I::BeginCapture(*mode),
                call(CAPTURE_BEGIN, 0),
                I::DiscardTop,
            ]),
            I::EndCapture => out.extend([call(CAPTURE_END, 0), I::DiscardTop, I::EndCapture]),
            I::Return => out.extend([call(CAPTURE_END, 0), I::DiscardTop, I::Return]),
            I::Jump(to) => out.push(I::Jump(target(*to))),
            I::JumpIfFalse(to) => out.push(I::JumpIfFalse(target(*to))),
            I::JumpIfFalseOrPop(to) => out.push(I::JumpIfFalseOrPop(target(*to))),
            I::JumpIfTrueOrPop(to) => out.push(I::JumpIfTrueOrPop(target(*to))),
            I::Iterate(to) => out.push(I::Iterate(target(*to))),
            other => out.push(other.clone()),
        }
    };
    // Where each old instruction starts in the new code.
    let mut starts = Vec::with_capacity(code.len() + 1);
    let mut next = 0;
    for pc in 0..len {
        starts.push(next);
        next += code.get(pc).map_or(0, |instr| guarded_len(pc, instr));
    }
    starts.push(next);
    let target = |old: u32| starts.get(old as usize).copied().unwrap_or(next);
    let mut out = Instructions::new(code.name(), code.source());
    let mut new = Vec::with_capacity(8);
    for pc in 0..len {
        let Some(instr) = code.get(pc) else { break };
        let (span, line) = (code.get_span(pc), code.get_line(pc));
        new.clear();
        guarded(pc, instr, &target, &mut new);
        debug_assert_eq!(new.len() as u32, guarded_len(pc, instr));
        for new in new.drain(..) {
            match (span, line) {
                (Some(span), _) => out.add_with_span(new, span),
                (None, Some(line)) => out.add_with_line(new, line as u16),
                (None, None) => out.add(new),
            };
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Values as Python prints them
// ------------------------------------------------------------------------------------------------

/// Python's `str(x)`, which is what jinja2 prints for `{{ x }}`; a limit error if that is
/// longer than `limit` bytes (lists may hold the same list many times over).
fn py_str(value: &Value, limit: usize) -> Result<String, Error> {
    let s = match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut s = String::new();
            py_repr(value, &mut s, 0, limit);
            s
        }
    };
    match s.len() > limit {
        true => Err(limit_error(format!(
            "a printed value exceeds {limit} bytes"
        ))),
        false => Ok(s),
    }
}

/// Appends Python's `repr(value)` to `out`, stopping early once `out` is over `limit` bytes.
fn py_repr(value: &Value, out: &mut String, depth: usize, limit: usize) {
    // Objects may contain themselves.
    if depth > 64 {
        out.push_str("...");
        return;
    }
    if out.len() > limit {
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
                if out.len() > limit {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out, depth + 1, limit);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if out.len() > limit {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out, depth + 1, limit);
                out.push_str(": ");
                py_repr(
                    &value.get_item(&key).unwrap_or_default(),
                    out,
                    depth + 1,
                    limit,
                );
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
/// bind by position or keyword, as in Python. A limit error if the text would be longer than
/// `limit` bytes.
fn tojson(limit: usize, value: &Value, Rest(mut args): Rest<Value>) -> Result<Value, Error> {
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
                py_str(&v, limit)?
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
        limit,
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
    /// Longest text allowed, in bytes.
    limit: usize,
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
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out)?,
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
                    self.string(key, out)?;
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
                self.push(out, &self.item_sep)?;
            }
            self.newline(level + 1, out)?;
            item(it, out)?;
        }
        if !items.is_empty() {
            self.newline(level, out)?;
        }
        out.push(brackets[1]);
        Ok(())
    }

    /// Appends `text`, unless that takes `out` past the limit.
    fn push(&self, out: &mut String, text: &str) -> Result<(), Error> {
        if out.len() + text.len() > self.limit {
            return Err(limit_error(format!(
                "tojson: the text exceeds {} bytes",
                self.limit
            )));
        }
        out.push_str(text);
        Ok(())
    }

    fn newline(&self, level: usize, out: &mut String) -> Result<(), Error> {
        if let Some(indent) = &self.indent {
            self.push(out, "\n")?;
            for _ in 0..level {
                self.push(out, indent)?;
            }
        }
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) -> Result<(), Error> {
        self.push(out, "\"")?;
        for c in s.chars() {
            // One character may take `out` past the limit by at most 12 bytes.
            if out.len() > self.limit {
                return self.push(out, "");
            }
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
        self.push(out, "\"")
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
        let limits = ChatTemplateLimits {
            max_output_bytes: 1000,
            ..Default::default()
        };
        let t =
            ChatTemplate::with_limits("{{ 'x' * 600 }}{{ 'y' * 600 }}", "", "", limits).unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit);
        assert!(
            err.to_string().contains("output exceeds 1000 bytes"),
            "{err}"
        );
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

    /// `src` rendered by `ChatTemplate` (guarded) and by minijinja's own `Template::render`
    /// of the same compiled template (unguarded), with errors as text.
    fn guarded_and_plain(src: &str) -> [Result<String, String>; 2] {
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let m = msgs(&[("system", "be brief"), ("user", "hi"), ("assistant", "yo")]);
        let guarded = t.render(&m, true).map_err(|e| e.to_string());
        let plain = t
            .env
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(t.context(&m, true)))
            .map_err(|e| ChatTemplateError::new(&e, &t.limits).to_string());
        [guarded, plain]
    }

    #[test]
    fn guards_keep_semantics() {
        let sources = [
            // Macros (defaults, caller, recursion), set and filter blocks, recursive loops.
            "{% macro m(a, b='B') %}[{{ a ~ b }}{{ caller() if caller is defined }}]{% endmacro %}{{ m('a') }}{% call m(1, 2) %}c{{ 3 * 2 }}{% endcall %}",
            "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
            "{% set x %}a{{ 1 + 1 }}b{% endset %}{% set y | upper %}{{ x }}c{% endset %}{{ x }}|{{ y }}|{% filter upper %}d{{ x }}{% endfilter %}",
            "{% for x in [[1, [2, 3]], 4] recursive %}{% if x is sequence %}({{ loop(x) }}){% else %}{{ x }}{% endif %}{% endfor %}",
            // Loops, conditions, short circuits.
            "{% for m in messages %}{% if loop.first %}F{% elif m.role == 'user' and not loop.last %}U{% else %}{{ loop.index }}{% endif %}{% if m.role == 'assistant' %}{% break %}{% endif %}{% endfor %}{% for x in [] %}{% else %}E{% endfor %}",
            "{% for i in range(6) if i is odd %}{% if i == 3 %}{% continue %}{% endif %}{{ i }}{% endfor %}{{ none or 'o' }}{{ 0 and 1 }}{{ 'y' if messages else 'n' }}",
            // Operators, on constants and on variables.
            "{{ 1 + 2 * 3 - 7 // 2 % 3 ** 2 }} {{ 1.5 * 2 }} {{ -1 }} {{ 'ab' * 3 }} {{ 3 * 'c' }} {{ [1, 2] * 2 }} {{ [1] + [2] }} {{ 'a' ~ 1 ~ none ~ [2] }}",
            "{{ messages[1:] | length }} {{ messages[0].content[::-1] }} {{ 'abcdef'[1:5:2] }} {{ (1, 2, 3)[-2:] }} {{ 'x' in 'axb' }} {{ 2 not in [1, 3] }} {{ 1 < 2 < 3 }}",
            "{% set ns = namespace(s='', n=0) %}{% for m in messages %}{% set ns.s = ns.s + m.role[0] %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.s }}{{ ns.n }}{{ dict(a=1, b=[2]) }}",
            // Filters and methods that are guarded.
            "{{ 'a\nb'|indent(2, true) }}|{{ 'aXbX'|replace('X', '--') }}|{{ [1, 'b']|join('; ') }}|{{ 'a b  c'|split|list }}|{{ '%s=%03d'|format('k', 7) }}|{{ [1, 2, 3]|batch(2, 0)|list }}|{{ [1, 2, 3]|slice(2)|list }}",
            "{{ 'a,b'.split(',') }} {{ 'xx'.replace('x', 'yz', 1) }} {{ '{}-{:>3}'.format(1, 2) }} {{ ', '.join(['p', 'q']) }} {{ 'l1\nl2'.splitlines() }} {{ messages|map(attribute='role')|join(',') }}",
            "{{ messages|tojson }} {{ messages[0]|string }} {{ [3, 1, 2]|sort }} {{ 'aab'|unique|list }} {{ {'b': 1, 'a': 2}|dictsort }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }}",
            // Errors keep their lines.
            "line 1\n{{ 'a' ~ 'b' }}\n{{ 'a' + 1 }}",
            "{% macro m() %}\n{{ [1] * 'x' }}{% endmacro %}\n{{ m() }}",
        ];
        for src in sources {
            let [guarded, plain] = guarded_and_plain(src);
            assert_eq!(guarded, plain, "{src}");
        }
        assert_eq!(
            guarded_and_plain("{{ 'a' ~ 'b' }}\n{{ 'a' + 1 }}")[0]
                .as_ref()
                .unwrap_err()
                .split(':')
                .next(),
            Some("chat template render error at line 2")
        );
    }

    #[test]
    fn fuzz_regressions_fail_with_limit_errors() {
        for src in [
            include_str!("../../fuzz/regressions/chat_template/abort-indent-huge.jinja"),
            include_str!("../../fuzz/regressions/chat_template/oom-indent-filter.jinja"),
            include_str!("../../fuzz/regressions/chat_template/oom-indent-var.jinja"),
            include_str!("../../fuzz/regressions/chat_template/oom-replace.jinja"),
            include_str!("../../fuzz/regressions/chat_template/oom-string-concat.jinja"),
        ] {
            let t0 = Instant::now();
            let err = render(src, &[("user", "hi")], true).unwrap_err();
            assert_eq!(err.kind(), ChatTemplateErrorKind::Limit, "{src}: {err}");
            assert!(t0.elapsed() < Duration::from_secs(1), "{src}");
        }
    }

    #[test]
    fn operators_on_constants_run_guarded() {
        // minijinja would build this string when compiling; it is refused when rendering.
        let t0 = Instant::now();
        let t =
            ChatTemplate::new("{% if false %}{{ 'x' * 100000000 }}{% endif %}ok", "", "").unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "ok");
        let err = render("{{ ('ab' ~ 'cd') * 100000000 }}", &[], false).unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Limit);
        assert!(
            err.message().contains("`*` would build 400000000 bytes"),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(
            unfold_constants(
                "{{ 'a' ~ 'b' ~ x }}{{ -1 < 2 }}{{ [1] + [2] }}",
                &machinery::parse(
                    "{{ 'a' ~ 'b' ~ x }}{{ -1 < 2 }}{{ [1] + [2] }}",
                    "t",
                    Default::default(),
                    Default::default()
                )
                .unwrap()
            ),
            "{{ __retort_id('a') ~ 'b' ~ x }}{{ __retort_id(-1) < 2 }}{{ __retort_id([1]) + [2] }}"
        );
    }

    #[test]
    fn reserved_names_are_refused() {
        let err = ChatTemplate::new("a\n{{ __retort_iter(1) }}", "", "").unwrap_err();
        assert_eq!(err.kind(), ChatTemplateErrorKind::Syntax);
        assert_eq!(err.line(), Some(2));
    }

    #[test]
    fn captures_and_results_are_capped() {
        let limits = ChatTemplateLimits {
            max_output_bytes: 1000,
            ..Default::default()
        };
        let err = |src: &str| {
            let e = ChatTemplate::with_limits(src, "", "", limits)
                .unwrap()
                .render(&msgs(&[("user", "hi")]), false)
                .unwrap_err();
            assert_eq!(e.kind(), ChatTemplateErrorKind::Limit, "{src}: {e}");
            e.message().to_owned()
        };
        let captured = "captured text (a set or filter block, or a macro's output) exceeds 1000";
        assert!(
            err("{% set x %}{% for i in range(200) %}abcdef{% endfor %}{% endset %}")
                .starts_with(captured)
        );
        assert!(err("{% macro m() %}{% for i in range(200) %}{{ i }}...{% endfor %}{% endmacro %}{% set x = m() %}").starts_with(captured));
        assert!(err("{% for i in range(200) %}abcdef{% endfor %}")
            .starts_with("output exceeds 1000 bytes"));
        for (src, what) in [
            ("{{ 'a\nb'|indent(1000) }}", "filter indent"),
            (
                "{{ ('x' * 100)|replace('x', 'yyyyyyyyyyyy') }}",
                "filter replace",
            ),
            ("{{ range(100)|join('x' * 20) }}", "filter join"),
            ("{{ '%2000s'|format(1) }}", "filter format"),
            ("{{ [1]|batch(100) }}", "filter batch"),
            ("{{ ('x' * 100)|list }}", "filter list"),
            ("{{ '{:>2000}'.format(1) }}", "method format"),
            ("{{ ('x' * 600) ~ ('y' * 600) }}", "`~`"),
            ("{{ range(25)|list + range(25)|list }}", "`+`"),
            ("{{ [1, 2, 3] * 20 }}", "`*`"),
            ("{{ messages|tojson(indent='x' * 999) }}", "tojson"),
        ] {
            assert!(err(src).contains(what), "{src}: {}", err(src));
        }
        // A render builds at most 8 times the cap in all.
        let total = err("{% set ns = namespace(l=[]) %}{% for i in range(100) %}{% set ns.l = [ns.l, 'x' * 900] %}{% endfor %}");
        assert!(
            total.starts_with("the template built more than 8000 bytes"),
            "{total}"
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
