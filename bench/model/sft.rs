//! LoRA / QLoRA training throughput of a random-initialized model, set up as
//! ../shared/bench/torch_qlora_baseline.py does: LoRA r16 (alpha 32, no dropout) on all seven
//! projections, batch 1, random tokens with the loss on the second half of the sequence, AdamW at
//! 1e-4; no token rows (the baseline trains none). Prints one JSON line per configuration:
//! `tok_s` = steps·seq / time of the timed steps (after warm-up steps), like the baseline.
//!
//! `sft_bench [--preset 4b] [--seq 1024,2048] [--quant nf4|none] [--checkpointing 1|0]
//! [--steps 10] [--warmup 3] [--device cuda|cpu]`. Built with `--features cuda` for the GPU;
//! run by bench/model/device.sh, which also samples the peak GPU memory.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device};
use forge_stages::model::init::{Shape, random_decoder};
use forge_stages::model::linear::Proj;
use forge_stages::model::lora::LoraConfig;
use forge_stages::model::{Arch, ModelError};
use forge_stages::train::batch::MicroBatch;
use forge_stages::train::optim::AdamWConfig;
use forge_stages::train::trainer::{Quant, TrainConfig, Trainer};

struct Args {
    preset: String,
    seqs: Vec<usize>,
    nf4: bool,
    checkpointing: bool,
    steps: usize,
    warmup: usize,
    device: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        preset: "4b".into(),
        seqs: vec![1024, 2048],
        nf4: true,
        checkpointing: true,
        steps: 10,
        warmup: 3,
        device: "cuda".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--preset" => a.preset = value.clone(),
            "--seq" => a.seqs = value.split(',').map(num).collect::<Result<_, _>>()?,
            "--quant" => a.nf4 = value == "nf4",
            "--checkpointing" => a.checkpointing = value == "1",
            "--steps" => a.steps = num(value)?.max(1),
            "--warmup" => a.warmup = num(value)?,
            "--device" => a.device = value.clone(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), ModelError> {
    let device = match a.device.as_str() {
        "cpu" => Device::Cpu,
        _ => Device::new_cuda(0)?,
    };
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let config = Shape::parse(&a.preset)?.config(Arch::Qwen3)?;
    let started = Instant::now();
    let decoder = random_decoder(&config, 0, dtype, &device)?;
    let train = TrainConfig {
        quant: if a.nf4 { Quant::Nf4 } else { Quant::None },
        lora: LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        token_rows: Vec::new(),
        adamw: AdamWConfig::default(),
        max_grad_norm: 0.0,
        grad_checkpointing: a.checkpointing,
        seed: 0,
    };
    let mut trainer = Trainer::new(decoder, &train)?;
    device.synchronize()?;
    eprintln!("model ready in {:.1} s", started.elapsed().as_secs_f64());
    for &seq in &a.seqs {
        let ids: Vec<u32> = (0..seq).map(|i| ((i * 104_729) % 151_000) as u32).collect();
        let mask: Vec<bool> = (0..seq).map(|i| i >= seq / 2).collect();
        let batch = [MicroBatch::new(&[(&ids, &mask)], 0, &device)?];
        let mut timer = Instant::now();
        let mut loss = 0f32;
        for step in 0..a.warmup + a.steps {
            if step == a.warmup {
                device.synchronize()?;
                timer = Instant::now();
            }
            loss = trainer
                .step(&batch, 1e-4, step as u64)?
                .loss
                .to_scalar::<f32>()?;
        }
        device.synchronize()?;
        let seconds = timer.elapsed().as_secs_f64();
        println!(
            "{{\"preset\": \"{}\", \"seq\": {seq}, \"quant\": \"{}\", \"checkpointing\": {}, \"steps\": {}, \"tok_s\": {:.0}, \"step_s\": {:.3}, \"loss\": {loss:.4}}}",
            a.preset,
            if a.nf4 { "nf4" } else { "none" },
            a.checkpointing,
            a.steps,
            (a.steps * seq) as f64 / seconds,
            seconds / a.steps as f64,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sft_bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sft_bench: {e}");
            ExitCode::from(1)
        }
    }
}
