//! `forge model init`, `forge generate` and `forge model import` from the command line.

use std::path::Path;

use crate::support::*;

#[test]
fn init_a_tiny_model_and_chat_with_it() {
    let ws = Ws::new("stages: {}\n");
    let tok = tokenizer().display().to_string();
    let r = ws.ok(&[
        "model",
        "init",
        "--arch",
        "qwen3",
        "--preset",
        "tiny",
        "--out",
        "tiny",
        "--seed",
        "3",
        "--tokenizer",
        &tok,
    ]);
    assert!(r.stdout.contains("4 layers, hidden 64"), "{}", r.stdout);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(ws.path("tiny").join(f).is_file(), "{f}");
    }
    // Same seed, same weights; another seed, other weights.
    ws.ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        "again",
        "--seed",
        "3",
        "--tokenizer",
        &tok,
    ]);
    ws.ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        "other",
        "--seed",
        "4",
        "--tokenizer",
        &tok,
    ]);
    let bytes = |d: &str| std::fs::read(ws.path(d).join("model.safetensors")).unwrap();
    assert_eq!(bytes("tiny"), bytes("again"));
    assert_ne!(bytes("tiny"), bytes("other"));

    // A random model babbles, but the whole path runs: template, tokenizer, decoder, decoding.
    let r = ws.ok(&[
        "generate",
        "--model",
        "tiny",
        "--max-new-tokens",
        "8",
        "Hello there",
    ]);
    assert!(!r.stdout.trim().is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains("stopped at --max-new-tokens 8"),
        "{}",
        r.stderr
    );
    let again = ws.ok(&[
        "generate",
        "--model",
        "tiny",
        "--max-new-tokens",
        "8",
        "Hello there",
    ]);
    assert_eq!(r.stdout, again.stdout, "greedy decoding is deterministic");

    let bad = ws.forge(&["generate", "--model", "nowhere", "hi"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("nowhere"), "{}", bad.stderr);
    let bad = ws.forge(&[
        "model",
        "init",
        "--arch",
        "gpt9",
        "--out",
        "x",
        "--tokenizer",
        &tok,
    ]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("--arch gpt9"), "{}", bad.stderr);
    let bad = ws.forge(&["model", "import", "forge.yaml", "--out", "imported"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("forge.yaml"), "{}", bad.stderr);
}

/// Writes a LoRA adapter in PEFT's layout for the tiny preset (hidden 64, 4 heads of 64,
/// intermediate 256, 4 layers) on q_proj and down_proj, with nonzero A and B; `q_in` is q_proj's
/// input width (64 fits).
/// The safetensors bytes are written by hand, as any other tool could.
fn write_adapter(dir: &Path, q_in: usize) {
    let r = 2;
    let mut shapes = Vec::new();
    for layer in 0..4 {
        let p = format!("base_model.model.model.layers.{layer}");
        shapes.push((format!("{p}.self_attn.q_proj.lora_A.weight"), [r, q_in]));
        shapes.push((format!("{p}.self_attn.q_proj.lora_B.weight"), [256, r]));
        shapes.push((format!("{p}.mlp.down_proj.lora_A.weight"), [r, 256]));
        shapes.push((format!("{p}.mlp.down_proj.lora_B.weight"), [64, r]));
    }
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in &shapes {
        let start = data.len();
        for i in 0..shape[0] * shape[1] {
            let v = ((i as f32 * 0.73 + start as f32 * 0.01).sin() * 0.5).to_le_bytes();
            data.extend_from_slice(&v);
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    let config = r#"{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj", "down_proj"], "bias": "none"}"#;
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
}

#[test]
fn generate_applies_an_adapter_and_refuses_a_bad_one() {
    let ws = Ws::new("stages: {}\n");
    let tok = tokenizer().display().to_string();
    ws.ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        "tiny",
        "--seed",
        "3",
        "--tokenizer",
        &tok,
    ]);
    let generate = |adapter: Option<&str>| {
        let mut args = vec!["generate", "--model", "tiny", "--max-new-tokens", "8"];
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        args.push("Hello there");
        ws.forge(&args)
    };
    write_adapter(&ws.path("adapter"), 64);
    let plain = generate(None);
    let adapted = generate(Some("adapter"));
    assert_eq!((plain.code, adapted.code), (0, 0), "{}", adapted.stderr);
    assert!(!adapted.stdout.trim().is_empty());
    assert_ne!(
        plain.stdout, adapted.stdout,
        "the adapter changes the reply"
    );

    let missing = generate(Some("no-such-adapter"));
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains("no-such-adapter/adapter_config.json"),
        "{}",
        missing.stderr
    );
    write_adapter(&ws.path("wrong"), 32);
    let wrong = generate(Some("wrong"));
    assert_eq!(wrong.code, 1);
    for needle in [
        "adapter_model.safetensors",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "has shape [2, 32], expected [2, 64]",
    ] {
        assert!(wrong.stderr.contains(needle), "{needle}: {}", wrong.stderr);
    }
}
