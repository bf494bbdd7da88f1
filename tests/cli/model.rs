//! `forge model init`, `forge generate` and `forge model import` from the command line.

use std::path::Path;
use std::process::Command;

use crate::support::*;

fn tokenizer() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-assets/qwen3-tokenizer");
    let st = Command::new("bash")
        .arg(root.join("scripts/fetch-tokenizer.sh"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/fetch-tokenizer.sh failed");
    dest
}

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
