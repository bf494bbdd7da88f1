//! The command line: parses arguments, dispatches, and maps errors to exit codes
//! (0 success, 1 a stage failed, 2 usage or config error).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, Pipeline, Set};
use crate::graph::{Dag, Format};
use crate::progress::Ui;
use crate::remote::Remote;
use crate::run::{Engine, EngineError, Force, RunOptions, StageStatus};
use crate::workspace::{LockBusy, Workspace};
use crate::{gc, metrics};

#[derive(Parser)]
#[command(
    name = "forge",
    version,
    about = "Turn a pretrained LLM into a reliable tool caller, as a cached, content-addressed build.",
    long_about = "Turn a pretrained LLM into a reliable tool caller, as a cached, content-addressed build.\n\n\
        forge reads forge.yaml, builds the DAG of its stages, hashes every stage's inputs and params \
        with blake3 and reruns only what is stale. Outputs live in artifacts/<stage>/; the object store, \
        run cache and logs live in cache/; forge.lock records what each stage last produced.",
    after_help = "Exit codes: 0 success, 1 a stage failed, 2 usage or config error.\n\
        Start with `forge run`, then `forge status` and `forge why STAGE` after you edit forge.yaml."
)]
pub struct Cli {
    /// The pipeline file; its directory is the workspace root.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "forge.yaml",
        value_name = "PATH"
    )]
    file: PathBuf,
    /// The shared cache (overrides forge.yaml's `remote:`): file:///PATH, http(s)://HOST/PREFIX
    /// or s3://BUCKET/PREFIX (S3 endpoint, region and credentials from the AWS_* variables).
    #[arg(long, global = true, env = "FORGE_REMOTE", value_name = "URL")]
    remote: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the stale stages among STAGE... (all stages when none are named) and their ancestors.
    ///
    /// Each stage ends as one of: ran, fresh (nothing changed), restored (this exact key ran before;
    /// its output came back from the run cache), pulled (from the remote cache), failed, skipped
    /// (upstream failed). A named stage that writes report.md (eval) has it printed at the end.
    Run {
        /// Stages to build (with everything they depend on).
        stages: Vec<String>,
        /// Run up to N independent stages at once (stages needing the same GPU never overlap).
        #[arg(short = 'j', long = "jobs", default_value_t = 1, value_name = "N")]
        jobs: usize,
        /// Say what would run and why, without running anything.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Re-execute even fresh stages: all selected stages, or only STAGE (repeatable).
        #[arg(long, value_name = "STAGE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
        force: Vec<String>,
        /// Override a param for this run: STAGE.PARAM=VALUE (repeatable; recorded in forge.lock
        /// like an edit of forge.yaml).
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        set: Vec<String>,
        /// After a failure, keep running stages that do not depend on it.
        #[arg(short = 'k', long)]
        keep_going: bool,
        /// If another forge holds the workspace, exit (code 2) instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// Echo every line the stages' commands print.
        #[arg(short, long)]
        verbose: bool,
        /// Push every stage that runs to the remote cache (forge.yaml: `remote: {push: true}`).
        #[arg(long)]
        push: bool,
    },
    /// Upload the recorded outputs of STAGE... (all when none are named) to the remote cache.
    Push { stages: Vec<String> },
    /// Fetch from the remote cache whatever STAGE... (and their ancestors) need; run nothing.
    Pull { stages: Vec<String> },
    /// Show every stage's state (fresh, stale, never-run) and why.
    Status {
        /// Machine-readable: [{"stage", "state", "reasons": [...]}].
        #[arg(long)]
        json: bool,
    },
    /// Explain why STAGE would rerun, following stale upstream stages.
    Why { stage: String },
    /// Print the stage graph.
    Dag {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show the figures stages wrote to their metrics.json, or compare them with the last lock.
    Metrics {
        #[command(subcommand)]
        action: Option<MetricsAction>,
    },
    /// Score model outputs with BFCL's rules (identical verdicts to the official checker).
    Bfcl {
        #[command(subcommand)]
        action: BfclAction,
    },
    /// Chat with a model: render PROMPT with its chat template, generate, print the reply.
    Generate {
        /// A Hugging Face model directory (config.json, safetensors, tokenizer files).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// A trained adapter directory in PEFT's layout (adapter_config.json and
        /// adapter_model.safetensors, as sft writes or PEFT saves), applied un-merged on MODEL.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// A system message.
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        #[arg(long, default_value_t = 512, value_name = "N")]
        max_new_tokens: usize,
        /// Sample at this temperature (default: greedy).
        #[arg(long, value_name = "T")]
        temperature: Option<f64>,
        /// Nucleus sampling: keep the most likely tokens up to this probability mass.
        #[arg(long, default_value_t = 1.0, value_name = "P")]
        top_p: f64,
        /// The sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The user message.
        prompt: String,
    },
    /// Create or import models.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Time training on random tokens (compare with shared/bench/torch_qlora_baseline.py).
    Bench {
        #[command(subcommand)]
        action: BenchAction,
    },
    /// Delete cache entries and objects that neither forge.lock nor a recent run references, and
    /// the resumable state of unfinished runs not touched within the keep window.
    Gc {
        /// Keep run-cache entries and unfinished runs' state younger than this many days (so
        /// reverting an edit stays instant and a killed run can still resume).
        #[arg(long, default_value_t = 7.0, value_name = "DAYS")]
        keep_days: f64,
    },
}

#[derive(Subcommand)]
enum BfclAction {
    /// Score a results file in BFCL's own format (one JSON line per entry: `id` and the raw model
    /// text in `result`), or a BFCL results directory. Prints the per-category report.
    Score {
        /// BFCL's data directory (bfcl_eval/data: BFCL_v4_*.json and possible_answer/);
        /// scripts/fetch-bfcl.sh DIR fetches it.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long, value_name = "FILE")]
        results: PathBuf,
        /// Comma-separated categories or groups (all, single_turn, non_live, live); default:
        /// every category present in the results.
        #[arg(long, value_name = "LIST")]
        categories: Option<String>,
        /// Score only the first N entries of each category.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the scores (and each entry's verdict) as JSON instead of the report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// Write a random-initialized model (config.json, model.safetensors) with the real tokenizer.
    Init {
        /// qwen3, qwen2 or llama.
        #[arg(long, default_value = "qwen3")]
        arch: String,
        /// tiny (trains on a CPU in minutes), 0.6b, 4b, or a config.json.
        #[arg(long, default_value = "tiny", value_name = "PRESET|CONFIG.json")]
        preset: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where tokenizer.json and tokenizer_config.json are (default: the `tokenizer` stage's
        /// output, artifacts/tokenizer; scripts/fetch-tokenizer.sh DIR fetches them).
        #[arg(long, value_name = "DIR")]
        tokenizer: Option<PathBuf>,
    },
    /// Turn a GGUF file (Llama architecture, e.g. SmolLM2) into a Hugging Face model directory:
    /// config.json, model.safetensors (dequantized), tokenizer.json, tokenizer_config.json.
    Import {
        /// The .gguf file.
        file: PathBuf,
        /// The directory to write (must be empty or absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Weight dtype of the safetensors: f32 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

#[derive(Subcommand)]
enum BenchAction {
    /// LoRA/QLoRA steps on one row of random tokens (loss on its second half, LoRA on all seven
    /// projections); prints JSON: tok_s, peak_gib and what the peak measures.
    Sft {
        /// A Hugging Face model directory.
        #[arg(long, value_name = "DIR", required_unless_present = "preset")]
        model: Option<PathBuf>,
        /// Instead of --model: a random-initialized Qwen3 built in memory, of a preset (tiny,
        /// 0.6b, 4b) or a config.json.
        #[arg(long, value_name = "PRESET", conflicts_with = "model")]
        preset: Option<String>,
        /// Tokens per step.
        #[arg(long, default_value_t = 1024, value_name = "N")]
        seq: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10, value_name = "N")]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3, value_name = "N")]
        warmup: usize,
        /// none or nf4.
        #[arg(long, default_value = "none")]
        quant: String,
        #[arg(long)]
        grad_checkpointing: bool,
        /// cpu or cuda.
        #[arg(long, default_value = "cuda")]
        device: String,
        /// auto (f32 on a CPU, bf16 on a GPU), f32 or bf16.
        #[arg(long, default_value = "auto")]
        dtype: String,
        #[arg(long, default_value_t = 16, value_name = "R")]
        lora_r: usize,
        #[arg(long, default_value_t = 32.0, value_name = "ALPHA")]
        lora_alpha: f64,
    },
}

#[derive(Subcommand)]
enum MetricsAction {
    /// Each stage's metrics.json, flattened (all stages when none are named).
    Show {
        stages: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Compare the metrics recorded in forge.lock with the previous lock (or FILE).
    Diff {
        /// A lock file to compare against, e.g. `git show HEAD:forge.lock > old.lock`.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
}

/// A failure with its exit code.
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl From<ConfigError> for Exit {
    fn from(e: ConfigError) -> Exit {
        Exit {
            code: 2,
            message: e.to_string(),
        }
    }
}

impl From<EngineError> for Exit {
    fn from(e: EngineError) -> Exit {
        let code = if matches!(e, EngineError::Usage(_)) {
            2
        } else {
            1
        };
        Exit {
            code,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Exit {
        Exit {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn load(file: &Path, sets: &[Set]) -> Result<(Workspace, Pipeline, Dag), Exit> {
    let ws = Workspace::of(file).map_err(|e| Exit {
        code: 2,
        message: format!("{}: {e}", file.display()),
    })?;
    let pipeline = config::load(file, sets)?;
    let dag = Dag::build(&pipeline)?;
    Ok((ws, pipeline, dag))
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32, Exit> {
    match cli.command {
        Command::Run {
            stages,
            jobs,
            dry_run,
            force,
            set,
            keep_going,
            no_wait,
            verbose,
            push,
        } => {
            let sets = set
                .iter()
                .map(|s| Set::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let (ws, pipeline, dag) = load(&cli.file, &sets)?;
            let _guard = if dry_run {
                None
            } else {
                Some(ws.lock(!no_wait).map_err(|e| Exit {
                    code: 2,
                    message: e.to_string(),
                })?)
            };
            let force = if force.is_empty() {
                Force::None
            } else if force.iter().any(String::is_empty) {
                Force::All
            } else {
                Force::Stages(force.into_iter().collect::<BTreeSet<_>>())
            };
            let remote = open_remote(cli.remote.as_deref(), &pipeline)?;
            let push = push || pipeline.remote.as_ref().is_some_and(|r| r.push);
            if push && remote.is_none() {
                return Err(Exit {
                    code: 2,
                    message: "--push needs a remote: `remote:` in forge.yaml, --remote URL or FORGE_REMOTE".into(),
                });
            }
            let mut engine = Engine::open(&ws, &pipeline, &dag, remote)?;
            let ui = Ui::new(pipeline.stages.keys().map(String::len).max().unwrap_or(0));
            let opts = RunOptions {
                targets: stages,
                jobs,
                dry_run,
                force,
                keep_going,
                verbose,
                push,
                pull_only: false,
            };
            let summary = engine.run(&opts, &ui)?;
            if !dry_run {
                // A stage named on the command line that wrote a report gets it shown.
                for stage in &opts.targets {
                    if let Ok(report) =
                        std::fs::read_to_string(ws.artifact(stage).join("report.md"))
                    {
                        println!("\n{}", report.trim_end());
                    }
                }
            }
            Ok(if summary.failed > 0 { 1 } else { 0 })
        }
        Command::Status { json } => {
            let (ws, pipeline, dag) = load(&cli.file, &[])?;
            let remote = open_remote(cli.remote.as_deref(), &pipeline)?;
            let engine = Engine::open(&ws, &pipeline, &dag, remote)?;
            let status = engine.status()?;
            if json {
                #[derive(serde::Serialize)]
                struct Row<'a> {
                    stage: &'a str,
                    state: &'a str,
                    reasons: Vec<String>,
                    restorable: bool,
                    on_remote: bool,
                }
                let rows: Vec<Row> = status
                    .iter()
                    .map(|s| Row {
                        stage: &s.stage,
                        state: s.state,
                        reasons: s.reasons.iter().map(ToString::to_string).collect(),
                        restorable: s.restorable,
                        on_remote: s.on_remote,
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
            } else {
                let w = status.iter().map(|s| s.stage.len()).max().unwrap_or(0);
                for s in &status {
                    let mut why: Vec<String> = s.reasons.iter().map(ToString::to_string).collect();
                    if s.restorable {
                        why.push("restorable from the run cache".into());
                    }
                    if s.on_remote {
                        why.push("the remote cache has it".into());
                    }
                    let line = format!("{:<10}{:<w$}  {}", s.state, s.stage, why.join("; "));
                    println!("{}", line.trim_end());
                }
            }
            Ok(0)
        }
        Command::Why { stage } => {
            let (ws, pipeline, dag) = load(&cli.file, &[])?;
            if !pipeline.stages.contains_key(&stage) {
                return Err(Exit {
                    code: 2,
                    message: format!("no stage `{stage}` (stages: {})", dag.order().join(", ")),
                });
            }
            let remote = open_remote(cli.remote.as_deref(), &pipeline)?;
            let engine = Engine::open(&ws, &pipeline, &dag, remote)?;
            let status = engine.status()?;
            print!("{}", explain(&status, &stage));
            Ok(0)
        }
        Command::Push { stages } => {
            let (ws, pipeline, dag) = load(&cli.file, &[])?;
            let remote = open_remote(cli.remote.as_deref(), &pipeline)?;
            let engine = Engine::open(&ws, &pipeline, &dag, remote)?;
            let ui = Ui::new(pipeline.stages.keys().map(String::len).max().unwrap_or(0));
            let summary = engine.push(&stages, &ui)?;
            Ok(if summary.failed > 0 { 1 } else { 0 })
        }
        Command::Pull { stages } => {
            let (ws, pipeline, dag) = load(&cli.file, &[])?;
            let remote = open_remote(cli.remote.as_deref(), &pipeline)?;
            if remote.is_none() {
                return Err(Exit {
                    code: 2,
                    message: "no remote: set `remote:` in forge.yaml, --remote URL or FORGE_REMOTE"
                        .into(),
                });
            }
            let _guard = ws.lock(true).map_err(|e| Exit {
                code: 2,
                message: e.to_string(),
            })?;
            let mut engine = Engine::open(&ws, &pipeline, &dag, remote)?;
            let ui = Ui::new(pipeline.stages.keys().map(String::len).max().unwrap_or(0));
            let opts = RunOptions {
                targets: stages,
                pull_only: true,
                ..RunOptions::default()
            };
            let summary = engine.run(&opts, &ui)?;
            Ok(if summary.failed > 0 { 1 } else { 0 })
        }
        Command::Dag { format } => {
            let (_, _, dag) = load(&cli.file, &[])?;
            print!("{}", dag.render(format));
            Ok(0)
        }
        Command::Metrics { action } => {
            let (ws, _, dag) = load(&cli.file, &[])?;
            match action.unwrap_or(MetricsAction::Show {
                stages: Vec::new(),
                json: false,
            }) {
                MetricsAction::Show { stages, json } => {
                    let stages = dag.select(&stages).map_err(|m| Exit {
                        code: 2,
                        message: m,
                    })?;
                    print!("{}", metrics::show(&ws, &stages, json)?);
                }
                MetricsAction::Diff { against } => {
                    print!("{}", metrics::diff(&ws, against.as_deref())?);
                }
            }
            Ok(0)
        }
        Command::Bfcl {
            action:
                BfclAction::Score {
                    data,
                    results,
                    categories,
                    limit,
                    json,
                },
        } => {
            use forge_stages::eval::{Category, score_results};
            let categories = categories
                .map(|c| Category::parse_list(&c))
                .transpose()
                .map_err(|e| Exit {
                    code: 2,
                    message: e.to_string(),
                })?;
            let scores =
                score_results(&data, &results, categories.as_deref(), limit).map_err(|e| Exit {
                    code: 2,
                    message: e.to_string(),
                })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&scores).expect("scores serialize")
                );
            } else {
                print!("{}", scores.to_report_md());
            }
            Ok(0)
        }
        Command::Generate {
            model,
            adapter,
            system,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            prompt,
        } => {
            use forge_stages::model::generate::{ChatOptions, GenerateOptions, Sampling, chat};
            use std::io::Write;
            let sampling = match temperature {
                Some(temperature) if temperature > 0.0 => Sampling::Sample {
                    temperature,
                    top_p,
                    seed,
                },
                _ => Sampling::Greedy,
            };
            let options = ChatOptions {
                system,
                adapter,
                generate: GenerateOptions {
                    max_new_tokens,
                    sampling,
                    ..GenerateOptions::default()
                },
                ..ChatOptions::default()
            };
            let mut stdout = std::io::stdout();
            let reply = chat(&model, &prompt, &options, &mut |text| {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            })
            .map_err(|e| Exit {
                code: 1,
                message: e.to_string(),
            })?;
            println!();
            let g = &reply.generation;
            if let Some(r) = &g.repetition {
                eprintln!(
                    "warning: degenerate repetition: a {}-token pattern repeated {} times at the end",
                    r.period, r.repeats
                );
            }
            if matches!(
                g.stop,
                forge_stages::model::generate::StopReason::MaxNewTokens
            ) {
                eprintln!("note: stopped at --max-new-tokens {max_new_tokens} before an end token");
            }
            Ok(0)
        }
        Command::Model {
            action:
                ModelAction::Init {
                    arch,
                    preset,
                    out,
                    seed,
                    tokenizer,
                },
        } => {
            use forge_stages::model::config::Arch;
            use forge_stages::model::init::{Shape, init_model};
            let arch = Arch::parse(&arch).ok_or_else(|| Exit {
                code: 2,
                message: format!("--arch {arch}: expected qwen3, qwen2 or llama"),
            })?;
            let shape = Shape::parse(&preset).map_err(|e| Exit {
                code: 2,
                message: format!("--preset {preset}: {e}"),
            })?;
            let tokenizer = match tokenizer {
                Some(t) => t,
                None => {
                    let ws = Workspace::of(&cli.file).map_err(|e| Exit {
                        code: 2,
                        message: e.to_string(),
                    })?;
                    let t = ws.artifact("tokenizer");
                    if !t.join("tokenizer.json").is_file() {
                        return Err(Exit {
                            code: 2,
                            message: format!(
                                "no tokenizer at {}: pass --tokenizer DIR (scripts/fetch-tokenizer.sh DIR fetches the Qwen3 one) or run `forge run tokenizer`",
                                t.display()
                            ),
                        });
                    }
                    t
                }
            };
            let report = init_model(arch, &shape, seed, &out, &tokenizer).map_err(|e| Exit {
                code: 1,
                message: e.to_string(),
            })?;
            println!("{}", report.summary());
            Ok(0)
        }
        Command::Model {
            action: ModelAction::Import { file, out, dtype },
        } => {
            use forge_stages::model::import::{ImportOptions, WeightDtype, import_gguf};
            let dtype: WeightDtype = dtype.parse().map_err(|e| Exit {
                code: 2,
                message: format!("--dtype {dtype}: {e}"),
            })?;
            let report = import_gguf(&file, &out, &ImportOptions { dtype }).map_err(|e| Exit {
                code: 1,
                message: e.to_string(),
            })?;
            println!("{}", report.summary());
            Ok(0)
        }
        Command::Bench {
            action:
                BenchAction::Sft {
                    model,
                    preset,
                    seq,
                    steps,
                    warmup,
                    quant,
                    grad_checkpointing,
                    device,
                    dtype,
                    lora_r,
                    lora_alpha,
                },
        } => {
            use forge_stages::train::bench::{BenchModel, BenchOptions, bench_sft};
            use forge_stages::train::sft::resolve_device;
            // The sft stage's own param names and values.
            fn param<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, Exit> {
                serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|e| {
                    Exit {
                        code: 2,
                        message: format!("--{flag} {value}: {e}"),
                    }
                })
            }
            let (device, dtype) = resolve_device(
                param("device", &device)?,
                param("dtype", &dtype)?,
                forge_stages::Device::Cpu,
            );
            let model = match (model, preset) {
                (Some(dir), _) => BenchModel::Dir(dir),
                (None, Some(preset)) => BenchModel::Random(preset),
                (None, None) => unreachable!("clap requires --model or --preset"),
            };
            let options = BenchOptions {
                model,
                seq,
                steps,
                warmup,
                quant: param("quant", &quant)?,
                grad_checkpointing,
                device,
                dtype,
                lora_r,
                lora_alpha,
            };
            let result = bench_sft(&options).map_err(|e| Exit {
                code: 1,
                message: e.to_string(),
            })?;
            println!(
                "{}",
                serde_json::to_string(&result).expect("the result serializes")
            );
            Ok(0)
        }
        Command::Gc { keep_days } => {
            let (ws, pipeline, _) = load(&cli.file, &[])?;
            let _guard = ws.lock(true).map_err(|e: LockBusy| Exit {
                code: 2,
                message: e.to_string(),
            })?;
            println!("{}", gc::collect(&ws, &pipeline, keep_days)?);
            Ok(0)
        }
    }
}

/// The remote named by --remote / FORGE_REMOTE, else by forge.yaml.
fn open_remote(flag: Option<&str>, pipeline: &Pipeline) -> Result<Option<Remote>, Exit> {
    let Some(url) = flag.or(pipeline.remote.as_ref().map(|r| r.url.as_str())) else {
        return Ok(None);
    };
    if !config::remote_url_ok(url) {
        return Err(Exit {
            code: 2,
            message: format!(
                "remote `{url}`: expected file:///PATH, http(s)://HOST/PREFIX or s3://BUCKET/PREFIX"
            ),
        });
    }
    Remote::open(url).map(Some).map_err(|e| Exit {
        code: 2,
        message: e.to_string(),
    })
}

/// `forge why`: the stage's reasons, then those of each stale upstream stage, indented.
fn explain(status: &[StageStatus], stage: &str) -> String {
    fn go(
        status: &[StageStatus],
        stage: &str,
        depth: usize,
        out: &mut String,
        seen: &mut BTreeSet<String>,
    ) {
        let Some(s) = status.iter().find(|s| s.stage == stage) else {
            return;
        };
        let pad = "  ".repeat(depth);
        if !seen.insert(stage.to_string()) {
            return;
        }
        if s.reasons.is_empty() {
            out.push_str(&format!("{pad}{stage} is {}\n", s.state));
            return;
        }
        let restorable = if s.restorable {
            " (its output for this key is in the run cache)"
        } else {
            ""
        };
        out.push_str(&format!("{pad}{stage} is {}{restorable}:\n", s.state));
        for r in &s.reasons {
            out.push_str(&format!("{pad}  - {r}\n"));
            if let crate::plan::Reason::UpstreamStale { stage: up } = r {
                go(status, up, depth + 2, out, seen);
            }
        }
    }
    let mut out = String::new();
    go(status, stage, 0, &mut out, &mut BTreeSet::new());
    out
}
