//! The engine: staleness, caching, scheduling, failures, crash safety, config errors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// data.txt → upper → (count, tagged) → report; `other` reads a var nobody else reads.
const CHAIN: &str = r#"
vars:
  tag: v1
  unused_by_most: x
stages:
  upper:
    cmd: tr a-z A-Z < data.txt > ${out}/up.txt && echo upper >> exec.log
    deps: [data.txt]
  count:
    cmd: wc -c < ${stages.upper}/up.txt > ${out}/n && echo count >> exec.log
  tagged:
    cmd: sed "s/^/${vars.tag}:/" ${stages.upper}/up.txt > ${out}/t && echo tagged >> exec.log
    params: {width: 3}
  report:
    cmd: cat ${stages.count}/n ${stages.tagged}/t > ${out}/report && echo report >> exec.log
  other:
    cmd: echo ${vars.unused_by_most} > ${out}/o && echo other >> exec.log
"#;

#[test]
fn second_run_executes_nothing() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    let first = ws.ok(&["run"]);
    assert_eq!(
        first.executed(),
        ["count", "other", "report", "tagged", "upper"]
    );
    assert_eq!(ws.read("artifacts/report/report"), "6\nv1:HELLO\n");
    let second = ws.ok(&["run"]);
    assert!(
        second.states().values().all(|s| s == "fresh"),
        "{}",
        second.stdout
    );
    assert_eq!(
        ws.read("exec.log").lines().count(),
        5,
        "nothing executed twice"
    );
    let status = ws.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "fresh" && s["reasons"].as_array().unwrap().is_empty())
    );
}

#[test]
fn edits_rerun_exactly_what_depends_on_them() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    ws.ok(&["run"]);

    // A param of one stage: that stage and its descendants.
    std::fs::write(ws.path("forge.yaml"), CHAIN.replace("width: 3", "width: 4")).unwrap();
    let why = ws.ok(&["why", "report"]);
    assert!(
        why.stdout.contains("param `tagged.width` changed 3 → 4"),
        "{}",
        why.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.executed(), ["tagged"], "{}", r.stdout);
    // tagged's output is byte-identical (width is unused by the command): early cutoff.
    assert_eq!(r.states()["report"], "fresh");

    // A var: only the stages that reference it.
    std::fs::write(
        ws.path("forge.yaml"),
        CHAIN
            .replace("width: 3", "width: 4")
            .replace("tag: v1", "tag: v2"),
    )
    .unwrap();
    let status = ws.ok(&["status"]);
    assert!(
        status.stdout.contains("var `tag` changed \"v1\" → \"v2\""),
        "{}",
        status.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.executed(), ["report", "tagged"], "{}", r.stdout);

    // Touching an input without changing its bytes: nothing.
    let f = std::fs::File::options()
        .write(true)
        .open(ws.path("data.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let r = ws.ok(&["run"]);
    assert!(r.executed().is_empty(), "{}", r.stdout);

    // Changing its bytes: everything downstream of it, but not `other`.
    ws.write("data.txt", "world\n");
    let r = ws.ok(&["run"]);
    assert_eq!(
        r.executed(),
        ["count", "report", "tagged", "upper"],
        "{}",
        r.stdout
    );
    assert_eq!(r.states()["other"], "fresh");
}

#[test]
fn early_cutoff_stops_at_identical_output() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    ws.ok(&["run"]);
    // Same length, different bytes: `count` reruns but writes the same `6`.
    ws.write("data.txt", "jello\n");
    let r = ws.ok(&["run", "count"]);
    assert_eq!(r.executed(), ["count", "upper"]);
    std::fs::write(
        ws.path("forge.yaml"),
        CHAIN.replace("${stages.tagged}/t", "/dev/null"),
    )
    .unwrap();
    let r = ws.ok(&["run", "report"]);
    // report's command changed, so it runs; but count (unchanged output) was not its cause.
    assert!(
        r.stdout.contains("stage version or command changed"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("upstream `count` produced a new output"),
        "{}",
        r.stdout
    );
}

#[test]
fn reverting_a_param_restores_without_executing() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    ws.ok(&["run"]);
    let before = ws.read("artifacts/report/report");
    let r = ws.ok(&["run", "--set", "tagged.width=9"]);
    assert!(
        r.stdout.contains("param `tagged.width` changed 3 → 9"),
        "{}",
        r.stdout
    );
    let lock: serde_json::Value = serde_json::from_str(&ws.read("forge.lock")).unwrap();
    assert_eq!(
        lock["stages"]["tagged"]["params"]["width"], 9,
        "--set is recorded in the lock"
    );
    let executions = ws.read("exec.log").lines().count();

    // Back to the file's value: tagged's old key is in the run cache.
    let r = ws.ok(&["run"]);
    assert_eq!(r.states()["tagged"], "restored", "{}", r.stdout);
    assert_eq!(
        ws.read("exec.log").lines().count(),
        executions,
        "restoring executes nothing"
    );
    assert_eq!(ws.read("artifacts/report/report"), before);
    assert_eq!(
        ws.ok(&["status", "--json"])
            .stdout
            .matches("\"fresh\"")
            .count(),
        5
    );
}

#[test]
fn parallel_jobs_overlap_but_gpu_stages_never_do() {
    let ws = Ws::new(
        r#"
stages:
  a:
    cmd: sleep 2 && touch ${out}/a
  b:
    cmd: sleep 2 && touch ${out}/b
"#,
    );
    let t = Instant::now();
    let r = ws.ok(&["run", "-j", "2"]);
    let took = t.elapsed();
    assert_eq!(r.executed(), ["a", "b"]);
    assert!(
        took < Duration::from_millis(3500),
        "two 2 s stages under -j 2 took {took:?}"
    );

    let gpu = r#"
stages:
  g1:
    cmd: date +%s.%N > ${out}/start && echo $CUDA_VISIBLE_DEVICES > ${out}/dev && sleep 0.7 && date +%s.%N > ${out}/end
    resources: {gpu: 1}
  g2:
    cmd: date +%s.%N > ${out}/start && echo $CUDA_VISIBLE_DEVICES > ${out}/dev && sleep 0.7 && date +%s.%N > ${out}/end
    resources: {gpu: 1}
  cpu:
    cmd: date +%s.%N > ${out}/start && sleep 0.7 && date +%s.%N > ${out}/end
"#;
    let ws = Ws::new(gpu);
    let mut c = ws.cmd(&["run", "-j", "3"]);
    c.env("CUDA_VISIBLE_DEVICES", "3");
    let r = Run::from(c.output().unwrap());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let span = |s: &str| -> (f64, f64) {
        (
            ws.read(&format!("artifacts/{s}/start"))
                .trim()
                .parse()
                .unwrap(),
            ws.read(&format!("artifacts/{s}/end"))
                .trim()
                .parse()
                .unwrap(),
        )
    };
    let (g1, g2, cpu) = (span("g1"), span("g2"), span("cpu"));
    assert!(
        g1.1 <= g2.0 || g2.1 <= g1.0,
        "GPU stages overlapped: {g1:?} {g2:?}"
    );
    assert!(
        cpu.0 < g1.1.max(g2.1) && cpu.1 > g1.0.min(g2.0),
        "the CPU stage ran beside them"
    );
    assert_eq!(
        ws.read("artifacts/g1/dev").trim(),
        "3",
        "the stage is given the GPU it holds"
    );
    assert_eq!(ws.read("artifacts/g2/dev").trim(), "3");
}

#[test]
fn failing_stage_discards_output_shows_stderr_and_skips_downstream() {
    let ws = Ws::new(
        r#"
stages:
  ok:
    cmd: echo fine > ${out}/f
  bad:
    cmd: echo partial > ${out}/p; echo "line one" >&2; echo "it broke here" >&2; exit 3
  after:
    cmd: cat ${stages.bad}/p > ${out}/x
  independent:
    cmd: sleep 0.3; echo i > ${out}/i
    needs: [ok]
"#,
    );
    let r = ws.forge(&["run", "--keep-going"]);
    assert_eq!(r.code, 1);
    let s = r.states();
    assert_eq!(
        (
            s["ok"].as_str(),
            s["bad"].as_str(),
            s["after"].as_str(),
            s["independent"].as_str()
        ),
        ("ran", "failed", "skipped", "ran")
    );
    assert!(
        r.stdout.contains("command exited with status 3"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("| it broke here") && r.stderr.contains("cache/logs/bad.log"),
        "{}",
        r.stderr
    );
    assert!(
        !ws.path("artifacts/bad").exists(),
        "a failed stage publishes nothing"
    );
    assert_eq!(
        std::fs::read_dir(ws.path("cache/tmp")).unwrap().count(),
        0,
        "its partial output is discarded"
    );
    let lock: serde_json::Value = serde_json::from_str(&ws.read("forge.lock")).unwrap();
    assert!(lock["stages"].get("bad").is_none() && lock["stages"].get("ok").is_some());

    // Without --keep-going, nothing new starts after the failure.
    let ws2 = Ws::new("stages:\n  bad:\n    cmd: exit 1\n  later:\n    cmd: echo > ${out}/x\n");
    let r = ws2.forge(&["run"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.states()["later"], "skipped", "{}", r.stdout);
}

#[test]
fn dry_run_and_force() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    let r = ws.ok(&["run", "--dry-run"]);
    assert!(
        r.states().values().all(|s| s == "would run"),
        "{}",
        r.stdout
    );
    assert!(!ws.path("artifacts").exists() && !ws.path("exec.log").exists());
    ws.ok(&["run"]);
    ws.ok(&["run", "--set", "tagged.width=5"]);
    let r = ws.ok(&["run", "--dry-run"]);
    assert_eq!(r.states()["tagged"], "would restore", "{}", r.stdout);

    let r = ws.ok(&["run", "--force=count", "count"]);
    assert_eq!(r.executed(), ["count"], "{}", r.stdout);
    assert!(r.stdout.contains("forced"));
    let r = ws.ok(&["run", "--force", "report"]);
    assert_eq!(
        r.executed(),
        ["count", "report", "tagged", "upper"],
        "{}",
        r.stdout
    );
}

#[test]
fn outputs_edited_by_hand_and_corrupt_objects_are_repaired() {
    let ws = Ws::new(CHAIN);
    ws.write("data.txt", "hello\n");
    ws.ok(&["run"]);
    let report = ws.path("artifacts/report/report");

    // Replaced by hand (new file): the intact store restores it.
    std::fs::remove_file(&report).unwrap();
    std::fs::write(&report, "tampered").unwrap();
    let st = ws.ok(&["status"]);
    assert!(
        st.stdout
            .contains("output `artifacts/report` was modified by hand"),
        "{}",
        st.stdout
    );
    let r = ws.ok(&["run"]);
    assert_eq!(r.states()["report"], "restored");
    assert_eq!(ws.read("artifacts/report/report"), "6\nv1:HELLO\n");

    // Deleted outputs come back too.
    std::fs::remove_dir_all(ws.path("artifacts/count")).unwrap();
    assert_eq!(ws.ok(&["run"]).states()["count"], "restored");

    // Written in place (the artifact and the object share bytes): the object no longer matches
    // its hash, so it is discarded and the stage re-executed, never restored from it.
    let mut perms = std::fs::metadata(&report).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&report, perms).unwrap();
    std::fs::write(&report, "in-place edit").unwrap();
    let r = ws.ok(&["run"]);
    assert!(
        matches!(r.states()["report"].as_str(), "ran" | "restored"),
        "{}",
        r.stdout
    );
    assert_eq!(ws.read("artifacts/report/report"), "6\nv1:HELLO\n");
    assert_store_intact(&ws.path("cache/objects"));
}

const KILL_PIPELINE: &str = r#"
stages:
  gen:
    cmd: for i in $(seq 1 40); do echo "${params.seed}-$i" > ${out}/f$i; done; sleep 0.1
    params: {seed: 0}
  a:
    cmd: sleep 0.2; cat ${stages.gen}/f* | sort > ${out}/all
  b:
    cmd: sleep 0.15; mkdir ${out}/copy; cat ${stages.gen}/f1 > ${out}/copy/f1; wc -l < ${stages.gen}/f2 > ${out}/n
  c:
    cmd: cat ${stages.a}/all ${stages.b}/n > ${out}/final; sleep 0.1
"#;

#[test]
fn kill_9_at_random_moments_never_corrupts_the_workspace() {
    // Reference outputs for each seed, built without interruption.
    let seeds = 4;
    let expected: Vec<BTreeMap<String, Vec<u8>>> = (0..seeds)
        .map(|s| {
            let ws = Ws::new(KILL_PIPELINE);
            ws.ok(&["run", "--set", &format!("gen.seed={s}")]);
            tree(&ws.path("artifacts"))
        })
        .collect();
    assert_ne!(expected[0], expected[1]);

    let ws = Ws::new(KILL_PIPELINE);
    let mut rng = 0x9e3779b97f4a7c15u64;
    for trial in 0..24 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 900);
        let seed = trial % seeds;
        let set = format!("gen.seed={seed}");
        let mut child = ws.spawn(&["run", "-j", "2", "--set", &set]);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        // The next run must finish the job from whatever state the kill left.
        let r = ws.ok(&["run", "-j", "2", "--set", &set]);
        assert!(
            !r.states().values().any(|s| s == "failed"),
            "trial {trial}: {}",
            r.stdout
        );
        assert_eq!(
            tree(&ws.path("artifacts")),
            expected[seed],
            "trial {trial} (killed after {delay:?})"
        );
        let again = ws.ok(&["run", "--set", &set]);
        assert!(
            again.states().values().all(|s| s == "fresh"),
            "trial {trial}: {}",
            again.stdout
        );
    }
    assert_eq!(std::fs::read_dir(ws.path("cache/tmp")).unwrap().count(), 0);
    assert_store_intact(&ws.path("cache/objects"));
}

#[test]
fn a_second_run_waits_for_the_first_or_refuses_with_no_wait() {
    let ws = Ws::new("stages:\n  slow:\n    cmd: sleep 1.5 && echo done > ${out}/x\n");
    let first = ws.spawn(&["run"]);
    let pid = first.id();
    std::thread::sleep(Duration::from_millis(400));

    let refused = ws.forge(&["run", "--no-wait"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!("pid {pid}")),
        "{}",
        refused.stderr
    );

    let t = Instant::now();
    let waited = ws.ok(&["run"]);
    assert!(
        t.elapsed() > Duration::from_millis(500),
        "it waited for the holder"
    );
    assert!(
        waited.stderr.contains("waiting for another forge"),
        "{}",
        waited.stderr
    );
    assert_eq!(
        waited.states()["slow"],
        "fresh",
        "the first run's result is used, not rebuilt"
    );
    let first = Run::from(first.wait_with_output().unwrap());
    assert_eq!(first.states()["slow"], "ran");
}

#[test]
fn config_errors_exit_2_with_location_and_run_nothing() {
    let marker = "  marker:\n    cmd: touch ran-marker\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "stages:\n  a:\n    cmd: echo\n    cmdd: x\n",
            "forge.yaml:4:5",
            &["unknown field `cmdd`"],
        ),
        (
            "stages:\n  a:\n    cmd: echo\n    resources: {gpu: lots}\n",
            "forge.yaml:4:22",
            &["integer"],
        ),
        (
            "stages:\n  a:\n    cmd: echo\n  a:\n    cmd: again\n",
            "forge.yaml:4:3",
            &["duplicate", "a"],
        ),
        (
            "stages:\n  a:\n    cmd: cat ${stages.nope}\n",
            "forge.yaml:3:10",
            &["unknown stage `nope`"],
        ),
        (
            "stages:\n  a:\n    cmd: x\n    needs: [ghost]\n",
            "forge.yaml:4:13",
            &["unknown stage `ghost`"],
        ),
        (
            "stages:\n  a:\n    cmd: ${stages.b}\n  b:\n    cmd: ${stages.a}\n",
            "forge.yaml:2:3",
            &["cycle: a → b → a"],
        ),
        (
            "stages:\n  a:\n    cmd: x\n    deps: [missing.txt]\n",
            "forge.yaml:4:12",
            &["missing input file `missing.txt`"],
        ),
        (
            "stages:\n  a:\n    uses: warp-drive\n",
            "forge.yaml:3:11",
            &["unknown stage kind `warp-drive`"],
        ),
        (
            "stages:\n  a:\n    cmd: echo ${vars.nope}\n",
            "forge.yaml:3:10",
            &["unknown var `nope`"],
        ),
        (
            "stages:\n  a:\n    cmd: echo ${params.p}\n",
            "forge.yaml:3:10",
            &["no param `p`"],
        ),
        (
            "vars: {flag: yes}\nstages:\n  a:\n    cmd: echo\n    unknown: 1\n",
            "forge.yaml:5:5",
            &["unknown field `unknown`"],
        ),
    ];
    for (yaml, loc, needles) in cases {
        let ws = Ws::new(&format!("{yaml}{marker}"));
        let r = ws.forge(&["run"]);
        assert_eq!(r.code, 2, "{yaml}\n{}", r.stderr);
        assert!(r.stderr.contains(loc), "expected {loc} in: {}", r.stderr);
        for n in *needles {
            assert!(r.stderr.contains(n), "expected `{n}` in: {}", r.stderr);
        }
        assert!(
            !ws.path("ran-marker").exists() && !ws.path("artifacts").exists(),
            "nothing runs: {yaml}"
        );
    }

    // Bad --set: syntax, unknown stage, unknown param of a command stage.
    let ws = Ws::new("stages:\n  a:\n    cmd: echo ${params.p} > ${out}/x\n    params: {p: 1}\n");
    for (set, needle) in [
        ("nodot=1", "expected STAGE.PARAM=VALUE"),
        ("ghost.p=1", "no stage `ghost`"),
        (
            "a.q=1",
            "forge.yaml:2:3: --set `a.q=1`: stage `a` has no param `q`",
        ),
    ] {
        let r = ws.forge(&["run", "--set", set]);
        assert_eq!(r.code, 2, "{set}");
        assert!(
            r.stderr.contains(needle),
            "expected `{needle}` in: {}",
            r.stderr
        );
    }
    assert!(!ws.path("artifacts").exists());
    assert_eq!(ws.forge(&["run", "nosuchstage"]).code, 2);
    assert_eq!(ws.forge(&["why", "nosuchstage"]).code, 2);
}

#[test]
fn dag_metrics_and_gc() {
    let yaml = r#"
stages:
  train:
    cmd: |
      echo '{"loss": ${params.loss}, "eval": {"acc": 0.5}}' > ${out}/metrics.json && head -c 20000 /dev/urandom > ${out}/weights
    params: {loss: 0.9}
  eval:
    cmd: cp ${stages.train}/metrics.json ${out}/metrics.json
"#;
    let ws = Ws::new(yaml);
    let dag = ws.ok(&["dag", "--format", "dot"]);
    assert!(
        dag.stdout.contains("\"train\" -> \"eval\";"),
        "{}",
        dag.stdout
    );
    assert!(ws.ok(&["dag"]).stdout.contains("eval   ← train"));
    assert!(
        ws.ok(&["dag", "--format", "mermaid"])
            .stdout
            .contains("train --> eval")
    );

    ws.ok(&["run"]);
    let show = ws.ok(&["metrics", "show"]);
    assert!(
        show.stdout.contains("train  eval.acc  0.5")
            && show.stdout.contains("train  loss      0.9"),
        "{}",
        show.stdout
    );
    ws.ok(&["run", "--set", "train.loss=0.4"]);
    let diff = ws.ok(&["metrics", "diff"]);
    assert!(
        diff.stdout.contains("train  loss    0.9  0.4  -0.5"),
        "{}",
        diff.stdout
    );

    // Two training outputs are in the store; with no keep window only the locked one survives.
    let kept = ws.ok(&["gc"]);
    assert!(
        kept.stdout
            .contains("removed 0 run-cache entries, 0 objects and 0 unfinished runs' state"),
        "{}",
        kept.stdout
    );
    let freed = ws.ok(&["gc", "--keep-days", "0"]);
    assert!(
        freed.stdout.contains("removed 2 run-cache entries"),
        "{}",
        freed.stdout
    );
    assert!(
        freed.stdout.contains("KiB"),
        "it says how much was freed: {}",
        freed.stdout
    );
    // The lock (loss 0.4) is intact; the old loss 0.9 must now run again: its entry is gone.
    assert!(
        ws.ok(&["run", "--set", "train.loss=0.4"])
            .states()
            .values()
            .all(|s| s == "fresh")
    );
    assert_eq!(ws.ok(&["run"]).states()["train"], "ran");
}

#[test]
fn command_progress_and_output_reach_the_user() {
    let ws = Ws::new(
        "stages:\n  train:\n    cmd: 'echo \"::progress:: 1/2 loss=0.9\"; echo plain-line; echo \"::progress:: 2/2 loss=0.5\"; touch $FORGE_OUT/done'\n",
    );
    let r = ws.ok(&["run", "-v"]);
    assert!(
        r.stderr.contains("[train] 2/2 loss=0.5"),
        "the final step is shown: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("[train] plain-line"),
        "-v echoes command output: {}",
        r.stderr
    );
    assert!(ws.read("cache/logs/train.log").contains("plain-line"));
    assert!(
        ws.path("artifacts/train/done").exists(),
        "$FORGE_OUT is the output dir"
    );
}

/// A workspace holding the repository's default pipeline and the scripts it calls.
fn default_pipeline() -> Ws {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ws = Ws::new(&std::fs::read_to_string(root.join("forge.yaml")).unwrap());
    for script in ["scripts/fetch-tokenizer.sh", "scripts/fetch-bfcl.sh"] {
        ws.write(script, &std::fs::read_to_string(root.join(script)).unwrap());
    }
    ws
}

/// `--set`s that keep the default pipeline's training to two steps a stage and its eval to a few
/// tokens per row.
const QUICK: [&str; 18] = [
    "--set",
    "sft-short.max_steps=2",
    "--set",
    "sft-short.eval_every=2",
    "--set",
    "sft-short.dev_limit=2",
    "--set",
    "sft.max_steps=2",
    "--set",
    "sft.eval_every=2",
    "--set",
    "sft.dev_limit=2",
    "--set",
    "eval.limit=1",
    "--set",
    "eval.test_limit=2",
    "--set",
    "eval.max_new_tokens=4",
];

#[test]
fn default_pipeline_runs_and_every_stage_accounts_for_its_rows() {
    let ws = default_pipeline();
    let r = ws.ok(&[&["run", "--set", "synth.rows=300"][..], &QUICK].concat());
    assert_eq!(
        r.executed(),
        [
            "bfcl-data",
            "eval",
            "format",
            "model",
            "normalize",
            "sft",
            "sft-short",
            "split",
            "synth",
            "tokenizer",
            "verify"
        ],
        "{}",
        r.stdout
    );
    let metrics = |s: &str| -> serde_json::Value {
        serde_json::from_str(&ws.read(&format!("artifacts/{s}/metrics.json"))).unwrap()
    };
    let lines = |p: &str| ws.read(p).lines().count() as u64;
    assert_eq!(lines("artifacts/synth/data.jsonl"), 300);
    for s in ["normalize", "verify", "split"] {
        let m = metrics(s);
        let (i, k, q) = (
            m["rows_in"].as_u64().unwrap(),
            m["rows_kept"].as_u64().unwrap(),
            m["rows_quarantined"].as_u64().unwrap(),
        );
        assert_eq!(i, k + q, "{s}: rows in = kept + quarantined");
        assert_eq!(
            q,
            lines(&format!("artifacts/{s}/quarantine.jsonl")),
            "{s}: every dropped row is in quarantine.jsonl"
        );
    }
    assert_eq!(metrics("normalize")["rows_in"], 300);
    let split_rows: u64 = ["train", "dev", "test"]
        .iter()
        .map(|p| lines(&format!("artifacts/split/{p}.jsonl")))
        .sum();
    assert_eq!(split_rows, metrics("split")["rows_kept"].as_u64().unwrap());
    for (part, m) in metrics("format")["splits"].as_object().unwrap() {
        assert_eq!(
            m["rows_in"],
            lines(&format!("artifacts/split/{part}.jsonl")),
            "format {part}"
        );
        assert_eq!(
            m["rows_in"].as_u64(),
            Some(m["rows_kept"].as_u64().unwrap() + m["rows_quarantined"].as_u64().unwrap())
        );
    }
    assert!(ws.path("artifacts/format/train.tokens").exists());
    // eval: one entry per BFCL category and two test rows, each a line of generations.jsonl.
    let eval = metrics("eval");
    assert_eq!(eval["bfcl"]["entries"], 13, "{eval}");
    assert_eq!(eval["ladder"]["rows"], 2, "{eval}");
    assert_eq!(lines("artifacts/eval/generations.jsonl"), 13 + 2);
    assert!(eval["generation"]["hit_cap"].is_number(), "{eval}");
    assert!(ws.read("artifacts/eval/report.md").contains("## BFCL V4"));

    // A data param edit reruns from that stage on; the tokenizer is not fetched again.
    let r = ws.ok(&[
        &["run", "--set", "synth.rows=300", "--set", "split.seed=8"][..],
        &QUICK,
    ]
    .concat());
    assert_eq!(r.states()["tokenizer"], "fresh");
    assert_eq!(r.states()["bfcl-data"], "fresh");
    assert_eq!(r.states()["verify"], "fresh");
    assert_eq!(
        r.executed(),
        ["eval", "format", "sft", "sft-short", "split"],
        "{}",
        r.stdout
    );

    // The README's main command: naming eval prints its report after the result lines.
    let r = ws.ok(&[
        &[
            "run",
            "eval",
            "--set",
            "synth.rows=300",
            "--set",
            "split.seed=8",
        ][..],
        &QUICK,
    ]
    .concat());
    assert!(r.executed().is_empty(), "{}", r.stdout);
    assert!(
        r.stdout.contains("## BFCL V4") && r.stdout.contains("## Metric ladder"),
        "{}",
        r.stdout
    );
}

#[test]
fn builtin_params_and_inputs_are_checked_before_anything_runs() {
    let cases: &[(&str, &str)] = &[
        (
            "stages:\n  s:\n    uses: synth\n    params:\n      rows: many\n",
            "forge.yaml:5:13: stage `s` (uses: synth): param `rows`",
        ),
        (
            "stages:\n  s:\n    uses: synth\n    params:\n      rowz: 5\n",
            "unknown field `rowz`",
        ),
        (
            "stages:\n  n:\n    uses: normalize\n",
            "forge.yaml:2:3: stage `n`: `normalize` needs input `rows`",
        ),
        (
            "stages:\n  n:\n    uses: normalize\n    inputs:\n      rows: data.json\n      extra: data.json\n",
            "`normalize` has no input `extra` (inputs: rows)",
        ),
        (
            "stages:\n  n:\n    uses: normalize\n    inputs:\n      rows: nothere.json\n",
            "missing input file `nothere.json`",
        ),
        (
            "stages:\n  s:\n    uses: split\n    inputs:\n      data: data.json\n    params:\n      train: 0.9\n",
            "sum to 1",
        ),
        (
            "stages:\n  s:\n    uses: synth\n    deps: [data.json]\n",
            "`deps:` is for `cmd:` stages",
        ),
    ];
    for (yaml, needle) in cases {
        let ws = Ws::new(&format!("{yaml}  marker:\n    cmd: touch ran-marker\n"));
        ws.write("data.json", "[]");
        let r = ws.forge(&["run"]);
        assert_eq!(r.code, 2, "{yaml}\n{}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "expected `{needle}` in: {}",
            r.stderr
        );
        assert!(!ws.path("ran-marker").exists(), "nothing runs");
    }
    let ws = Ws::new("stages:\n  s:\n    uses: synth\n");
    let r = ws.forge(&["run", "--set", "s.rows=-3"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("forge.yaml:2:3: stage `s` (uses: synth): param `rows`")
            && r.stderr.contains("--set"),
        "{}",
        r.stderr
    );
}

#[test]
fn state_dir_survives_a_failed_run_and_goes_once_the_stage_succeeds() {
    // Fails until its state holds two marks: a resumable stage picking up where it stopped.
    let ws = Ws::new(
        r#"
stages:
  resumable:
    cmd: echo x >> "$FORGE_STATE/marks" && test $(wc -l < "$FORGE_STATE/marks") -ge 2 && cp "$FORGE_STATE/marks" ${out}/marks
"#,
    );
    let first = ws.forge(&["run"]);
    assert_eq!(first.code, 1, "{}", first.stdout);
    let states: Vec<_> = std::fs::read_dir(ws.path("cache/state")).unwrap().collect();
    assert_eq!(states.len(), 1, "one state dir for the stage key");
    // gc keeps an unfinished run's state within the keep window, and frees it after.
    let kept = ws.ok(&["gc"]);
    assert!(
        kept.stdout.contains("0 unfinished runs' state"),
        "{}",
        kept.stdout
    );
    let freed = ws.ok(&["gc", "--keep-days", "0"]);
    assert!(
        freed.stdout.contains("1 unfinished runs' state"),
        "{}",
        freed.stdout
    );
    assert_eq!(
        std::fs::read_dir(ws.path("cache/state")).unwrap().count(),
        0
    );
    // Without its state the stage starts over: one mark, fails, and so on to the second.
    assert_eq!(ws.forge(&["run"]).code, 1);
    ws.ok(&["run"]);
    assert_eq!(ws.read("artifacts/resumable/marks"), "x\nx\n");
    assert_eq!(
        std::fs::read_dir(ws.path("cache/state")).unwrap().count(),
        0
    );
}
