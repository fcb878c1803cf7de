//! `retort`: run, inspect and measure GGUF models. Flags follow llama.cpp's tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use retort_models::gguf::{GgufFile, Value};
use retort_runtime::chat_template::{ChatMessage, ChatTemplate};
use retort_runtime::generate::{self, StopReason};
use retort_runtime::sampler::{Sampler, SamplerConfig};
use retort_runtime::{Error, Model, Result};

#[derive(Parser)]
#[command(name = "retort", version, about = "Run distilled reasoning models from GGUF files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Run(RunArgs),
    /// Convert a Hugging Face checkpoint folder, or re-quantize a GGUF file (like llama-quantize), to GGUF.
    Convert {
        input: PathBuf,
        #[arg(short = 'o', long = "outfile")]
        output: PathBuf,
        /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q4_k_m, q5_k_m, auto
        #[arg(long = "type", default_value = "auto")]
        output_type: String,
        #[command(flatten)]
        threads: Threads,
    },
    /// Print the token ids of a text as a JSON array.
    Tokenize {
        model: PathBuf,
        text: String,
        /// Add BOS/EOS as the model's vocabulary asks.
        #[arg(long)]
        add_special: bool,
    },
    /// Print a model file's metadata and tensor table.
    Inspect {
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the logits at every position of a token sequence to a .npy file.
    Eval {
        model: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        #[arg(long)]
        logits_out: PathBuf,
        /// Feed the tokens one at a time, as generation does, instead of in one batch.
        #[arg(long)]
        one_by_one: bool,
        #[command(flatten)]
        threads: Threads,
        #[command(flatten)]
        precision: Precision,
    },
    /// Prompt-processing and generation speed, like llama-bench (pp and tg tokens/s).
    Bench {
        model: PathBuf,
        /// Prompt tokens per prompt-processing run.
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Tokens generated per generation run.
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Repetitions of each test.
        #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
        repetitions: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        threads: Threads,
        #[command(flatten)]
        precision: Precision,
    },
    /// Memory read bandwidth (GB/s): the bound on decode speed, file bytes per token ÷ this.
    Bandwidth {
        /// Buffer size in MiB (far larger than the caches).
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        #[command(flatten)]
        threads: Threads,
    },
    /// Perplexity of a text, llama.cpp-style (non-overlapping chunks, second halves scored).
    Perplexity {
        model: PathBuf,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
        ctx: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        threads: Threads,
    },
}

#[derive(Args)]
struct Threads {
    /// CPU threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
}

impl Threads {
    fn get(&self) -> Result<usize> {
        match self.threads {
            Some(0) => Err(Error::Usage("-t must be at least 1".into())),
            Some(t) => Ok(t),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

#[derive(Args)]
struct Precision {
    /// Keep activations in f32 in every matmul (the exact reference's arithmetic). By default
    /// one-token steps (and, in run and bench, prompt batches) quantize them to 8 bits, as
    /// llama.cpp does, for speed.
    #[arg(long)]
    exact: bool,
    /// Key/value cache type: f32 (exact) or f16 (half the memory, like llama.cpp's default).
    #[arg(long, default_value = "f32")]
    kv_type: String,
}

impl Precision {
    /// `batches`: whether prompt batches may be quantized too (generation, not evaluation).
    fn apply(&self, exec: &mut retort_runtime::executor::Executor, batches: bool) -> Result<()> {
        exec.set_exact(self.exact);
        exec.set_quantized_batches(batches && !self.exact);
        let kv_type = match self.kv_type.to_ascii_lowercase().as_str() {
            "f32" => retort_kernels::DType::F32,
            "f16" => retort_kernels::DType::F16,
            other => return Err(Error::Usage(format!("unknown --kv-type '{other}' (known: f32, f16)"))),
        };
        exec.set_kv_type(kv_type)
    }
}

#[derive(Args)]
struct RunArgs {
    model: PathBuf,
    #[arg(short = 'p', long = "prompt")]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed (default: from the clock).
    #[arg(short = 's', long)]
    seed: Option<u64>,
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx: usize,
    #[command(flatten)]
    threads: Threads,
    #[command(flatten)]
    precision: Precision,
    /// Treat the prompt as a user message and render it with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Convert { input, output, output_type, threads } => threads.get().and_then(|t| convert(input, output, &output_type, t)),
        Command::Tokenize { model, text, add_special } => tokenize(model, &text, add_special),
        Command::Inspect { model, json } => inspect(model, json),
        Command::Eval { model, tokens, logits_out, one_by_one, threads, precision } => {
            threads.get().and_then(|t| eval(model, &tokens, logits_out, one_by_one, &precision, t))
        }
        Command::Bench { model, n_prompt, n_gen, repetitions, json, threads, precision } => {
            threads.get().and_then(|t| bench(model, n_prompt, n_gen, repetitions, json, &precision, t))
        }
        Command::Bandwidth { mib, threads } => threads.get().and_then(|t| bandwidth(mib, t)),
        Command::Perplexity { model, file, ctx, json, threads } => threads.get().and_then(|t| perplexity(model, file, ctx, json, t)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let threads = args.threads.get()?;
    let model = Model::load(&args.model)?;
    let tok = &model.tokenizer;
    let prompt = if args.chat {
        let source = model
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Usage(format!("{} has no chat template (tokenizer.chat_template)", args.model.display())))?;
        let text_of = |id: Option<u32>| id.and_then(|i| tok.token_bytes(i)).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let (bos_text, eos_text) = (text_of(tok.bos()), text_of(tok.eos()));
        let template = ChatTemplate::new(source, &bos_text, &eos_text)?;
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage { role: "system".into(), content: system });
        }
        messages.push(ChatMessage { role: "user".into(), content: args.prompt.clone() });
        let rendered = template.render(&messages, true)?;
        // Templates that write BOS themselves must not get a second one.
        let add_special = !(bos_text.is_empty() || rendered.starts_with(&bos_text));
        tok.encode(&rendered, add_special)
    } else {
        tok.encode(&args.prompt, true)
    };
    let sampler_config = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed: args.seed.unwrap_or_else(clock_seed),
    };
    sampler_config.validate().map_err(Error::Usage)?;
    let mut sampler = Sampler::new(sampler_config);
    let mut exec = model.executor(args.ctx, 512, false, threads)?;
    args.precision.apply(&mut exec, true)?;
    let stdout = std::io::stdout();
    let result = generate::generate(&mut exec, tok, &prompt, args.n_predict, &mut sampler, |text| {
        let mut out = stdout.lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    })?;
    println!();
    let t = &result.timings;
    eprintln!("load: {:.0} ms", model.load_seconds * 1e3);
    eprintln!("prompt: {} tokens in {:.0} ms, {:.2} tokens/s", t.prompt_tokens, t.prompt_seconds * 1e3, t.prompt_tps());
    eprintln!(
        "generation: {} tokens in {:.0} ms, {:.2} tokens/s ({} threads)",
        t.generated_tokens,
        t.generation_seconds * 1e3,
        t.generation_tps(),
        threads
    );
    if result.stop == StopReason::ContextFull {
        eprintln!("stopped: the context of {} positions is full", args.ctx);
    }
    Ok(())
}

fn convert(input: PathBuf, output: PathBuf, output_type: &str, threads: usize) -> Result<()> {
    use retort_convert::plan::OutputType;
    let output_type = OutputType::parse(output_type)
        .ok_or_else(|| Error::Usage(format!("unknown --type '{output_type}' (known: {})", OutputType::NAMES.join(", "))))?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Usage(e.to_string()))?;
    let start = std::time::Instant::now();
    let written = pool
        .install(|| {
            if input.is_dir() {
                retort_convert::from_hf::convert_checkpoint(&input, &output, output_type)
            } else {
                retort_convert::from_gguf::requantize(&input, &output, output_type)
            }
        })
        .map_err(|e| Error::Usage(e.to_string()))?;
    let mut counts = std::collections::BTreeMap::new();
    for (_, t) in &written {
        *counts.entry(t.name()).or_insert(0) += 1;
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MiB, {} tensors: {:?}) in {:.1} s",
        output.display(),
        size as f64 / (1 << 20) as f64,
        written.len(),
        counts,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn tokenize(path: PathBuf, text: &str, add_special: bool) -> Result<()> {
    // Only the header is needed: a truncated download still tokenizes.
    let file = GgufFile::open_header(&path)?;
    let tokenizer = retort_runtime::tokenizer::Tokenizer::new(retort_runtime::model::vocabulary_from_gguf(&file)?)?;
    let ids = tokenizer.encode(text, add_special);
    println!("{}", serde_json::to_string(&ids).expect("ids serialize"));
    Ok(())
}

fn inspect(path: PathBuf, json: bool) -> Result<()> {
    let file = GgufFile::open(&path)?;
    if json {
        let metadata: serde_json::Map<String, serde_json::Value> = file.metadata().map(|(k, v)| (k.to_owned(), value_to_json(v))).collect();
        let tensors: Vec<serde_json::Value> = file
            .tensors()
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "type": t.dtype.name(), "dims": t.dims, "offset": t.offset, "bytes": t.n_bytes}))
            .collect();
        let doc = serde_json::json!({"version": file.version, "alignment": file.alignment(), "metadata": metadata, "tensors": tensors});
        println!("{}", serde_json::to_string_pretty(&doc).expect("json serializes"));
        return Ok(());
    }
    println!("{}: GGUF v{}, {} metadata entries, {} tensors", path.display(), file.version, file.metadata().count(), file.tensors().len());
    for (k, v) in file.metadata() {
        println!("  {k} = {v}");
    }
    println!("tensors:");
    for t in file.tensors() {
        println!("  {:<40} {:<6} {:<22} {:>12} bytes", t.name, t.dtype.name(), format!("{:?}", t.dims), t.n_bytes);
    }
    let total: usize = file.tensors().iter().map(|t| t.n_bytes).sum();
    println!("total tensor data: {:.1} MiB", total as f64 / (1 << 20) as f64);
    Ok(())
}

/// Full values for JSON output (arrays included, so tools can read the vocabulary).
fn value_to_json(v: &Value) -> serde_json::Value {
    use retort_models::gguf::Array;
    use serde_json::json;
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => match a {
            Array::U8(v) => json!(v),
            Array::I8(v) => json!(v),
            Array::U16(v) => json!(v),
            Array::I16(v) => json!(v),
            Array::U32(v) => json!(v),
            Array::I32(v) => json!(v),
            Array::F32(v) => json!(v),
            Array::Bool(v) => json!(v),
            Array::String(v) => json!(v),
            Array::U64(v) => json!(v),
            Array::I64(v) => json!(v),
            Array::F64(v) => json!(v),
            Array::Array(v) => serde_json::Value::Array(v.iter().map(|a| value_to_json(&Value::Array(a.clone()))).collect()),
        },
    }
}

fn eval(path: PathBuf, tokens: &[u32], out: PathBuf, one_by_one: bool, precision: &Precision, threads: usize) -> Result<()> {
    let model = Model::load(&path)?;
    let mut exec = model.executor(tokens.len(), if one_by_one { 1 } else { 512 }, true, threads)?;
    precision.apply(&mut exec, false)?;
    let logits = generate::all_logits(&mut exec, tokens)?;
    let vocab = exec.vocab_size();
    retort_runtime::npy::write_f32(&out, &[tokens.len(), vocab], &logits).map_err(|e| Error::Io(out.display().to_string(), e))?;
    Ok(())
}

/// Like llama-bench: pp = one batch of `n_prompt` tokens from an empty cache; tg =
/// `n_gen` single-token steps from an empty cache. Token ids are pseudo-random (the
/// speed does not depend on them). One untimed warm-up run of each first.
fn bench(path: PathBuf, n_prompt: usize, n_gen: usize, repetitions: usize, json: bool, precision: &Precision, threads: usize) -> Result<()> {
    if repetitions == 0 || (n_prompt == 0 && n_gen == 0) {
        return Err(Error::Usage("nothing to measure: -r, and -p or -n, must be at least 1".into()));
    }
    let model = Model::load(&path)?;
    let start = std::time::Instant::now();
    let mut exec = model.executor(n_prompt.max(n_gen).max(1), n_prompt.max(1), false, threads)?;
    // Load time is the file's checks and the executor's setup (weights repacked at load
    // included), as llama.cpp's load time includes its repacking.
    let load_ms = (model.load_seconds + start.elapsed().as_secs_f64()) * 1e3;
    precision.apply(&mut exec, true)?;
    let vocab = exec.vocab_size() as u64;
    let tokens: Vec<u32> = (0..n_prompt.max(1) as u64).map(|i| ((i * 2654435761 + 12345) % vocab) as u32).collect();
    let mut time = |f: &mut dyn FnMut(&mut retort_runtime::executor::Executor) -> Result<()>| -> Result<Vec<f64>> {
        f(&mut exec)?;
        (0..repetitions)
            .map(|_| {
                let start = std::time::Instant::now();
                f(&mut exec)?;
                Ok(start.elapsed().as_secs_f64())
            })
            .collect()
    };
    let pp = if n_prompt > 0 { time(&mut |e| e.forward(&tokens, 0, false).map(|_| ()))? } else { vec![] };
    let tg = if n_gen > 0 {
        time(&mut |e| (0..n_gen).try_for_each(|pos| e.forward(&tokens[pos % tokens.len()..][..1], pos, false).map(|_| ())))?
    } else {
        vec![]
    };
    let stats = |secs: &[f64], n: usize| -> (f64, f64) {
        let tps: Vec<f64> = secs.iter().map(|s| n as f64 / s).collect();
        let mean = tps.iter().sum::<f64>() / tps.len().max(1) as f64;
        let var = tps.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (tps.len().max(2) - 1) as f64;
        (mean, var.sqrt())
    };
    let (pp_tps, pp_sd) = stats(&pp, n_prompt);
    let (tg_tps, tg_sd) = stats(&tg, n_gen);
    if json {
        println!(
            "{}",
            serde_json::json!({"pp_tps": pp_tps, "pp_sd": pp_sd, "tg_tps": tg_tps, "tg_sd": tg_sd, "threads": threads,
                "n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions, "load_ms": load_ms})
        );
    } else {
        println!("{}: {} threads, load {load_ms:.0} ms", path.display(), threads);
        if n_prompt > 0 {
            println!("pp{n_prompt}: {pp_tps:.2} ± {pp_sd:.2} tokens/s");
        }
        if n_gen > 0 {
            println!("tg{n_gen}: {tg_tps:.2} ± {tg_sd:.2} tokens/s");
        }
    }
    Ok(())
}

/// Reads a buffer far larger than the caches with `threads` threads, each summing its own
/// contiguous share with AVX2-width adds (the compiler vectorizes the loop), and prints the
/// best of 7 passes in GB/s, like STREAM's "best rate".
fn bandwidth(mib: usize, threads: usize) -> Result<()> {
    let words = mib.checked_mul(1 << 17).filter(|&w| w > 0).ok_or_else(|| Error::Usage(format!("--mib {mib} is not a usable size")))?;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let pool = retort_kernels::cpu::ThreadPool::new(threads).map_err(|e| Error::Usage(format!("cannot start {threads} threads: {e}")))?;
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut best = 0f64;
    for _ in 0..7 {
        let start = std::time::Instant::now();
        pool.run(&|ith, nth| {
            let share = &buffer[words * ith / nth..words * (ith + 1) / nth];
            let mut lanes = [0u64; 8];
            for chunk in share.chunks_exact(8) {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane = lane.wrapping_add(v);
                }
            }
            sink.fetch_add(lanes.iter().fold(0, |a, &b| a.wrapping_add(b)), std::sync::atomic::Ordering::Relaxed);
        });
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    log::debug!("checksum {}", sink.into_inner());
    println!("{}", serde_json::json!({"read_gb_s": best, "threads": threads, "mib": mib}));
    Ok(())
}

fn perplexity(path: PathBuf, text_path: PathBuf, ctx: usize, json: bool, threads: usize) -> Result<()> {
    let text = std::fs::read(&text_path).map_err(|e| Error::Io(text_path.display().to_string(), e))?;
    let text = String::from_utf8(text).map_err(|e| Error::Usage(format!("{}: not valid UTF-8 ({e})", text_path.display())))?;
    let model = Model::load(&path)?;
    let tok = &model.tokenizer;
    let tokens = tok.encode(&text, true);
    let mut exec = model.executor(ctx, ctx, true, threads)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let (ppl, scored) = generate::perplexity(&mut exec, &tokens, ctx, bos, |done, total, running| {
        if !json {
            eprintln!("[{done}/{total}] {running:.4}");
        }
    })?;
    if json {
        println!("{}", serde_json::json!({"ppl": ppl, "tokens": scored}));
    } else {
        println!("perplexity: {ppl:.4} over {scored} scored tokens ({} tokens of text, chunks of {ctx})", tokens.len());
    }
    Ok(())
}
