//! Greedy generation throughput of a random-initialized model, the way HF `generate` is timed in
//! ../shared/bench/torch_lora_baseline.py: random prompts of `--prompt` tokens, exactly `--new`
//! new tokens (no stop token), one batch of `--batch` rows. Prints one JSON line per batch size:
//! `new_tok_s` (batch·new / whole call, HF's definition), `decode_tok_s` (tokens after the first
//! / time after the first), `prefill_tok_s` (batch·prompt / time to the first token).
//!
//! `decode_bench [--preset 4b] [--prompt 512] [--new 128] [--batch 1,16] [--device cuda|cpu]
//! [--dtype bf16|f32] [--runs 2]`; the first run of each batch size warms up and is not printed.
//! Built with `--features cuda` for the GPU; see bench/model/README.md.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::DType;
use forge_stages::model::generate::{GenerateOptions, generate};
use forge_stages::model::init::{Shape, random_decoder};
use forge_stages::model::{Arch, ModelError, candle_device};

struct Args {
    preset: String,
    prompt: usize,
    new: usize,
    batches: Vec<usize>,
    device: String,
    dtype: DType,
    runs: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        preset: "4b".into(),
        prompt: 512,
        new: 128,
        batches: vec![1, 16],
        device: "cuda".into(),
        dtype: DType::BF16,
        runs: 2,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--preset" => a.preset = value.clone(),
            "--prompt" => a.prompt = num(value)?,
            "--new" => a.new = num(value)?,
            "--batch" => a.batches = value.split(',').map(num).collect::<Result<_, _>>()?,
            "--device" => a.device = value.clone(),
            "--dtype" => {
                a.dtype = match value.as_str() {
                    "bf16" => DType::BF16,
                    "f32" => DType::F32,
                    other => return Err(format!("--dtype {other}: bf16 or f32")),
                }
            }
            "--runs" => a.runs = num(value)?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), ModelError> {
    let device = match a.device.as_str() {
        "cpu" => candle_device(forge_stages::Device::Cpu)?,
        _ => candle_device(forge_stages::Device::Cuda(0))?,
    };
    let config = Shape::parse(&a.preset)?.config(Arch::Qwen3)?;
    let started = Instant::now();
    let model = random_decoder(&config, 0, a.dtype, &device)?;
    device.synchronize()?;
    eprintln!("model built in {:.1} s", started.elapsed().as_secs_f64());
    let options = GenerateOptions {
        max_new_tokens: a.new,
        ..GenerateOptions::default()
    };
    for &batch in &a.batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|r| {
                (0..a.prompt)
                    .map(|i| ((r * 7919 + i * 104_729) % 151_000) as u32)
                    .collect()
            })
            .collect();
        for run in 0..=a.runs {
            let start = Instant::now();
            let mut first: Option<f64> = None;
            let out = generate(&model, &prompts, &options, &mut |_, _| {
                first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            })?;
            let total = start.elapsed().as_secs_f64();
            let made: usize = out.iter().map(|g| g.tokens.len()).sum();
            if made != batch * a.new {
                return Err(ModelError::Invalid(format!(
                    "expected {} new tokens, got {made}",
                    batch * a.new
                )));
            }
            let first = first.unwrap_or(total);
            if run > 0 {
                println!(
                    "{{\"batch\": {batch}, \"prompt\": {}, \"new\": {}, \"run\": {run}, \"new_tok_s\": {:.1}, \"decode_tok_s\": {:.1}, \"prefill_tok_s\": {:.0}, \"total_s\": {total:.3}}}",
                    a.prompt,
                    a.new,
                    made as f64 / total,
                    (batch * (a.new - 1)) as f64 / (total - first),
                    (batch * a.prompt) as f64 / first,
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("decode_bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode_bench: {e}");
            ExitCode::from(1)
        }
    }
}
