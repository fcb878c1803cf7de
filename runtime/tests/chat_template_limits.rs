//! Hostile chat templates (the fuzz regressions in fuzz/regressions/chat_template/ and others
//! built the same way) fail fast with a `Limit` error, or render, without allocating much: a
//! counting global allocator measures the peak of each render.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use retort_runtime::chat_template::{
    ChatMessage, ChatTemplate, ChatTemplateErrorKind, ChatTemplateLimits, PRODUCED_PER_OUTPUT_BYTE,
};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as a new block then a freed one: the peak a copying realloc reaches.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tests in this binary run one at a time, so that a peak is one render's.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a render may allocate, unless it keeps what it builds (below).
const MAX_PEAK: usize = 64 << 20;

/// What a render that keeps everything it builds may allocate: its budget, and some.
fn max_peak_keeping() -> usize {
    let cap = ChatTemplateLimits::default().max_output_bytes;
    (PRODUCED_PER_OUTPUT_BYTE + 2) * cap
}
/// How long a render may take: the fuzz regressions fail at once; the other cases may go on
/// building until a limit, which takes a second or so.
fn max_time(quick: bool) -> Duration {
    let secs = if quick { 1 } else { 5 };
    match cfg!(debug_assertions) {
        true => Duration::from_secs(20 * secs),
        false => Duration::from_secs(secs),
    }
}

struct Case {
    name: String,
    source: String,
    /// Must fail with a limit error (else: may also render).
    must_fail: bool,
    max_peak: usize,
    quick: bool,
}

struct Outcome {
    result: Result<String, (ChatTemplateErrorKind, String)>,
    peak: usize,
    time: Duration,
}

/// Compiles and renders `source` with the default limits, measuring the allocation peak above
/// what was live before.
fn measure(source: &str) -> Outcome {
    let messages = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hello there!"),
        ChatMessage::new("assistant", "Hi! How can I help?"),
        ChatMessage::new("user", "Tell me a joke."),
    ];
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t0 = Instant::now();
    let result = ChatTemplate::new(source, "<s>", "</s>")
        .and_then(|t| t.render(&messages, true))
        .map_err(|e| (e.kind(), e.to_string()));
    let time = t0.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    Outcome { result, peak, time }
}

/// Checks that the case renders or fails with a limit error as it should, within its time
/// and memory bounds; returns a line describing what happened.
fn check(case: &Case) -> Result<String, String> {
    let outcome = measure(&case.source);
    let summary = match &outcome.result {
        Ok(text) => format!("rendered {} bytes", text.len()),
        Err((_, message)) => message.clone(),
    };
    let line = format!(
        "{}: {:.1} MB peak, {:.0} ms: {summary}",
        case.name,
        outcome.peak as f64 / 1e6,
        outcome.time.as_secs_f64() * 1e3
    );
    let ok = match &outcome.result {
        Ok(_) => !case.must_fail,
        Err((kind, _)) => *kind == ChatTemplateErrorKind::Limit,
    };
    match ok && outcome.peak <= case.max_peak && outcome.time <= max_time(case.quick) {
        true => Ok(line),
        false => Err(line),
    }
}

fn run_all(cases: &[Case]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = Vec::new();
    for case in cases {
        match check(case) {
            Ok(line) => eprintln!("ok   {line}"),
            Err(line) => {
                eprintln!("FAIL {line}");
                failures.push(line);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fuzz_regressions_are_refused_cheaply() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/chat_template");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let source = std::fs::read(&path).unwrap();
        let source = String::from_utf8_lossy(&source).into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The ones known when the guards were written must fail, not merely be harmless.
        let must_fail = [
            "abort-indent-huge.jinja",
            "oom-indent-filter.jinja",
            "oom-indent-var.jinja",
            "oom-replace.jinja",
            "oom-string-concat.jinja",
        ]
        .contains(&name.as_str());
        cases.push(Case {
            name,
            source,
            must_fail,
            max_peak: MAX_PEAK,
            quick: true,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        cases.len() >= 5,
        "{} regressions in {}",
        cases.len(),
        dir.display()
    );
    run_all(&cases);
}

#[test]
fn amplifying_constructs_are_bounded() {
    let doubling = |init: &str, step: &str, n: usize, end: &str| {
        format!(
            "{{% set x = {init} %}}{}{end}",
            format!("{{% set x = {step} %}}").repeat(n)
        )
    };
    let text_1k = "t".repeat(1000);
    let cases: Vec<(&str, String)> = vec![
        // Filters with a size argument.
        ("indent width", "{{ 'a\nb\nc'|indent(100000000) }}".into()),
        ("indent width keyword", "{{ 'a\nb'|indent(width=100000000, first=true) }}".into()),
        ("indent many lines", "{{ ('\n' * 1000000)|indent(100) }}".into()),
        ("batch count", "{{ [1]|batch(1000000000000) }}".into()),
        ("batch fill", "{{ [1]|batch(100000000, 0) }}".into()),
        ("slice count", "{{ [1]|slice(1000000000000) }}".into()),
        ("format width", "{{ '%1000000000s'|format('x') }}".into()),
        ("format precision", "{{ '%.1000000000f'|format(1.5) }}".into()),
        ("format star", "{{ '%*s'|format(1000000000, 'x') }}".into()),
        ("format mapping", format!("{{{{ '{}'|format({{'a': 'x' * 1000000}}) }}}}", "%(a)s".repeat(100))),
        ("str.format width", "{{ '{:>1000000000}'.format('x') }}".into()),
        ("str.format repeat", format!("{{{{ '{}'.format('x' * 1000000) }}}}", "{0}".repeat(100))),
        ("replace", "{{ ('x' * 1000000)|replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}".into()),
        ("replace empty", "{{ ('x' * 1000000)|replace('', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}".into()),
        ("str.replace", "{{ ('x' * 1000000).replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}".into()),
        ("join separator", "{{ (range(100000)|list)|join('s' * 1000) }}".into()),
        ("str.join", "{{ ('s' * 1000).join(range(100000)) }}".into()),
        ("tojson indent", "{{ [[[[[[1, 2, 3]]]]]]|tojson(indent='i' * 1000000) }}".into()),
        ("list of a string", "{{ ('x' * 10000000)|list|length }}".into()),
        ("split", "{{ ('a ' * 5000000).split()|length }}".into()),
        ("lines", "{{ ('\n' * 10000000)|lines|length }}".into()),
        // Operators.
        ("repeat string", "{{ ('x' * 100000000)|length }}".into()),
        ("repeat list", "{{ ([1, 2, 3] * 100000000)|length }}".into()),
        ("repeat list sum", "{{ ([1] * 1000000000000)|sum }}".into()),
        ("concat doubling", doubling("'ab'", "x ~ x", 40, "{{ x|length }}")),
        ("plus doubling", doubling("'ab'", "x + x", 40, "{{ x|length }}")),
        ("list doubling", doubling("[1]", "x + x", 40, "{{ x|length }}")),
        ("quadratic append", "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'xxxxxxxxxx' %}{% endfor %}{{ ns.s|length }}".into()),
        ("kept slices", "{% set x = 'x' * 10000000 %}{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% set ns.l = [ns.l, x[1:]] %}{% endfor %}done".into()),
        ("kept concats", "{% set x = 'x' * 10000000 %}{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% set ns.l = [ns.l, x ~ ''] %}{% endfor %}done".into()),
        // Printing values that hold one list many times over.
        ("print shared list", doubling("[1]", "[x, x]", 60, "{{ x }}")),
        ("concat shared list", doubling("[1]", "[x, x]", 60, "{{ x ~ '' }}")),
        ("string shared list", doubling("[1]", "[x, x]", 60, "{{ x|string }}")),
        ("tojson shared list", doubling("[1]", "[x, x]", 60, "{{ x|tojson }}")),
        ("pprint shared list", doubling("[1]", "[x, x]", 60, "{{ x|pprint }}")),
        ("join shared list", doubling("[1]", "[x, x]", 60, "{{ x|join(',') }}")),
        // Captured text: set blocks and macros.
        ("set block of raw text", format!("{{% set x %}}{{% for i in range(100000) %}}{text_1k}{{% endfor %}}{{% endset %}}{{{{ x|length }}}}")),
        ("set block doubling", format!("{{% set x = 'ab' %}}{}{{{{ x|length }}}}", "{% set x %}{{ x }}{{ x }}{% endset %}".repeat(40))),
        ("macro doubling", format!("{{% macro d(s) %}}{{{{ s }}}}{{{{ s }}}}{{% endmacro %}}{{{{ {}'ab'{} }}}}", "d(".repeat(40), ")".repeat(40))),
        ("filter block", format!("{{% filter upper %}}{{% for i in range(100000) %}}{text_1k}{{% endfor %}}{{% endfilter %}}")),
        // Plain big output.
        ("output loop", format!("{{% for i in range(100000) %}}{text_1k}{{% endfor %}}")),
        ("output loop of values", "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}".into()),
    ];
    // These keep every string they build, until the render's budget runs out.
    let keeping = ["quadratic append", "kept slices", "kept concats"];
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(name, source)| Case {
            name: name.to_owned(),
            source,
            must_fail: true,
            max_peak: match keeping.contains(&name) {
                true => max_peak_keeping(),
                false => MAX_PEAK,
            },
            quick: false,
        })
        .collect();
    run_all(&cases);
}

/// The guards leave ordinary templates alone, and a moderately long conversation renders.
#[test]
fn ordinary_templates_render() {
    let chatml = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let long = "word ".repeat(200_000);
    let messages: Vec<ChatMessage> = (0..10)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, long.clone()))
        .collect();
    let t = ChatTemplate::new(chatml, "", "").unwrap();
    let mut expected: String = messages
        .iter()
        .map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content))
        .collect();
    expected.push_str("<|im_start|>assistant\n");
    assert_eq!(t.render(&messages, true).unwrap(), expected);
}
