//! `forge bfcl score` on the real BFCL V4 data (fetched by scripts/fetch-bfcl.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

fn bfcl_data() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-assets/bfcl-data");
    let st = Command::new("bash")
        .arg(root.join("scripts/fetch-bfcl.sh"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/fetch-bfcl.sh failed");
    dest
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first acceptable value of each gold parameter, as Qwen's `<tool_call>` blocks.
fn gold_as_output(answer: &Value) -> String {
    let calls: Vec<String> = answer["ground_truth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gt| {
            let (name, params) = gt.as_object().unwrap().iter().next().unwrap();
            let args: serde_json::Map<String, Value> = params
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v[0] != json!(""))
                .map(|(k, v)| (k.clone(), v[0].clone()))
                .collect();
            format!(
                "<tool_call>\n{}\n</tool_call>",
                json!({"name": name, "arguments": args})
            )
        })
        .collect();
    calls.join("\n")
}

#[test]
fn scores_a_results_file_like_the_official_checker() {
    let data = bfcl_data();
    let ws = Ws::new("stages: {}\n");
    let questions = jsonl(&data.join("BFCL_v4_simple_python.json"));
    let answers = jsonl(&data.join("possible_answer/BFCL_v4_simple_python.json"));
    let mut lines = Vec::new();
    for (q, a) in questions.iter().zip(&answers).take(6) {
        lines.push(json!({"id": q["id"], "result": gold_as_output(a)}));
    }
    // One wrong answer: the gold arguments, sent to a function that was not asked for.
    let gold_name = answers[6]["ground_truth"][0]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let wrong = gold_as_output(&answers[6]).replacen(&gold_name, "not_the_function", 1);
    lines.push(json!({"id": questions[6]["id"], "result": wrong}));
    let irrelevance = jsonl(&data.join("BFCL_v4_irrelevance.json"));
    lines.push(json!({"id": irrelevance[0]["id"], "result": "None of these tools can do that."}));
    lines.push(json!({"id": irrelevance[1]["id"], "result": "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"}));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    ws.write("results.jsonl", &text);

    let data_arg = data.display().to_string();
    let r = ws.ok(&[
        "bfcl",
        "score",
        "--data",
        &data_arg,
        "--results",
        "results.jsonl",
        "--limit",
        "7",
        "--categories",
        "simple_python",
    ]);
    assert!(
        r.stdout.contains("| simple_python | 85.71% (6/7) |"),
        "{}",
        r.stdout
    );
    let r = ws.ok(&[
        "bfcl",
        "score",
        "--data",
        &data_arg,
        "--results",
        "results.jsonl",
        "--limit",
        "2",
        "--categories",
        "irrelevance",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let verdicts: Vec<bool> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["valid"].as_bool().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [true, false],
        "no call is right for irrelevance; a decodable call is wrong"
    );

    // Without --limit, the file lacks most entries: a clear error naming the file, exit 2.
    let r = ws.forge(&[
        "bfcl",
        "score",
        "--data",
        &data_arg,
        "--results",
        "results.jsonl",
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("results.jsonl: no result for"),
        "{}",
        r.stderr
    );
    ws.write(
        "bad.jsonl",
        "{\"id\": \"simple_python_0\", \"result\": 3}\n",
    );
    let r = ws.forge(&[
        "bfcl",
        "score",
        "--data",
        &data_arg,
        "--results",
        "bad.jsonl",
        "--limit",
        "1",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("bad.jsonl:1"), "{}", r.stderr);
}
