//! The sft stage end to end: synthetic rows → format → a small random Qwen3 → a PEFT adapter, and
//! a run killed with SIGKILL mid-training that resumes from its checkpoint to the same adapter.

use std::time::{Duration, Instant};

use crate::support::*;

/// A small pipeline ending in sft. The model has the real vocabulary (the tokenizer's ids go up
/// to 151,668) but hidden 32 and 2 layers; sft checkpoints every 2 of its 12 steps, each of two
/// micro-batches (trained in parallel).
fn pipeline() -> Ws {
    let ws = Ws::new(
        r#"stages:
  synth:
    uses: synth
    params: { rows: 30, seed: 3 }
  normalize:
    uses: normalize
    inputs: { rows: "${stages.synth}" }
    params: { format: xlam }
  verify:
    uses: verify
    inputs: { data: "${stages.normalize}" }
  split:
    uses: split
    inputs: { data: "${stages.verify}" }
    params: { seed: 3 }
  format:
    uses: format
    inputs: { data: "${stages.split}", model: tok }
  model:
    uses: model-init
    inputs: { tokenizer: tok, config: small.json }
    params: { preset: config, seed: 1 }
  sft:
    uses: sft
    inputs: { model: "${stages.model}", data: "${stages.format}" }
    params:
      max_steps: 12
      grad_accum: 2
      save_every: 2
      eval_every: 6
      dev_limit: 2
      lr: 5.0e-3
      lora_r: 4
      lora_alpha: 8
      lora_dropout: 0.1
      max_len: 900
"#,
    );
    let tok = tokenizer();
    std::fs::create_dir_all(ws.path("tok")).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(file), ws.path("tok").join(file)).unwrap();
    }
    ws.write(
        "small.json",
        r#"{"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "torch_dtype": "float32",
            "eos_token_id": 151645}"#,
    );
    ws
}

const ADAPTER: &str = "artifacts/sft/adapter_model.safetensors";

/// The complete checkpoints (`step-N` directories) under cache/state.
fn checkpoints(ws: &Ws) -> Vec<String> {
    let mut dirs: Vec<String> = walk(&ws.path("cache/state"))
        .into_iter()
        .filter_map(|p| {
            let dir = p.parent()?.file_name()?.to_str()?.to_string();
            (dir.starts_with("step-") && !dir.ends_with(".tmp")).then_some(dir)
        })
        .collect();
    dirs.dedup();
    dirs
}

#[test]
fn sft_writes_an_adapter_and_a_killed_run_resumes_to_the_same_one() {
    let whole = pipeline();
    let r = whole.ok(&["run", "sft"]);
    assert_eq!(r.states()["sft"], "ran", "{}", r.stdout);
    assert!(r.stdout.contains("12 steps, dev loss"), "{}", r.stdout);
    let adapter = std::fs::read(whole.path(ADAPTER)).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&whole.read("artifacts/sft/adapter_config.json")).unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["trainable_token_indices"],
        serde_json::json!([151657, 151658])
    );
    let rows: Vec<serde_json::Value> = whole
        .read("artifacts/sft/metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.iter().filter(|r| r.get("loss").is_some()).count(), 12);
    // Dev loss before training, after step 6 and after step 12.
    let dev: Vec<u64> = rows
        .iter()
        .filter(|r| r.get("dev_loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(dev, [0, 6, 12]);
    let metrics: serde_json::Value =
        serde_json::from_str(&whole.read("artifacts/sft/metrics.json")).unwrap();
    assert!(
        metrics["best_dev_loss"].as_f64().unwrap() < metrics["start_dev_loss"].as_f64().unwrap()
    );
    assert!(metrics["peak_memory_gib"].as_f64().unwrap() > 0.0);
    assert!(
        checkpoints(&whole).is_empty(),
        "state is dropped after success"
    );

    let killed = pipeline();
    killed.ok(&["run", "model", "format"]);
    let mut child = killed.spawn(&["run", "sft"]);
    let started = Instant::now();
    while checkpoints(&killed).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "sft finished before a checkpoint was seen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!killed.path(ADAPTER).exists());
    let at = checkpoints(&killed);
    assert_eq!(at.len(), 1, "{at:?}");
    assert_ne!(at[0], "step-00000012");

    let r = killed.ok(&["run", "sft"]);
    let step: u64 = at[0].trim_start_matches("step-").parse().unwrap();
    assert!(
        r.stdout.contains(&format!("resumed at step {step}")),
        "{}",
        r.stdout
    );
    assert_eq!(std::fs::read(killed.path(ADAPTER)).unwrap(), adapter);
    // The metrics of the steps before the checkpoint came back with it.
    let resumed_rows = killed.read("artifacts/sft/metrics.jsonl");
    let losses = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {}", v["step"], v["loss"], v["dev_loss"])
            })
            .collect()
    };
    assert_eq!(
        losses(&resumed_rows),
        losses(&whole.read("artifacts/sft/metrics.jsonl"))
    );
}

#[test]
fn bad_sft_params_are_named() {
    let ws = pipeline();
    let yaml = ws.read("forge.yaml");
    ws.write(
        "forge.yaml",
        &yaml.replace("lora_r: 4", "lora_r: 4\n      lora_targets: [q, qq]"),
    );
    let r = ws.forge(&["run", "sft", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("lora_targets") && r.stderr.contains("qq"),
        "{}",
        r.stderr
    );
    ws.write(
        "forge.yaml",
        &yaml.replace("lora_r: 4", "lora_r: 4\n      epochs: 2"),
    );
    let r = ws.forge(&["run", "sft"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "{out}");
    assert!(out.contains("`epochs` or `max_steps`, not both"), "{out}");
    ws.write(
        "forge.yaml",
        &yaml.replace(
            "lora_r: 4",
            "lora_r: 4\n      train_tokens: [\"<tool_call>\", \"hello world\"]",
        ),
    );
    let r = ws.forge(&["run", "sft"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 1, "{out}");
    assert!(out.contains("`hello world` is not a single token"), "{out}");
}
