use super::*;

fn p(yaml: &str, sets: &[&str]) -> Result<Pipeline, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plot.py"), "").unwrap();
    let sets: Vec<Set> = sets.iter().map(|s| Set::parse(s).unwrap()).collect();
    parse(yaml, Path::new("forge.yaml"), dir.path(), &sets)
}

#[test]
fn a_whole_var_keeps_its_type_and_partial_use_interpolates() {
    let pl = p(
        "vars:\n  lr: 1.0e-4\n  name: tiny\nstages:\n  s:\n    cmd: echo ${params.lr} ${vars.name}\n    params: {lr: '${vars.lr}', path: 'models/${vars.name}'}\n",
        &[],
    )
    .unwrap();
    let s = &pl.stages["s"];
    assert_eq!(s.params["lr"], serde_json::json!(1.0e-4));
    assert_eq!(s.params["path"], "models/tiny");
    assert_eq!(s.vars.keys().collect::<Vec<_>>(), ["lr", "name"]);
}

#[test]
fn stages_depend_only_on_what_they_reference() {
    let pl = p(
        "vars: {a: 1, b: 2}\nstages:\n  one:\n    cmd: echo ${vars.a} > ${out}/x\n  two:\n    cmd: cat ${stages.one}/x\n    deps: [plot.py]\n    needs: [one]\n",
        &[],
    )
    .unwrap();
    assert_eq!(pl.stages["one"].vars.len(), 1);
    assert!(pl.stages["one"].upstream.is_empty());
    let two = &pl.stages["two"];
    assert_eq!(two.upstream.iter().collect::<Vec<_>>(), ["one"]);
    assert_eq!(
        two.inputs.keys().collect::<Vec<_>>(),
        ["plot.py", "stages.one"]
    );
    assert!(two.vars.is_empty());
}

#[test]
fn set_values_are_typed_like_yaml_scalars_and_override_params() {
    let s = Set::parse("sft.lr=2e-4").unwrap();
    assert_eq!(
        (s.stage.as_str(), s.param.as_str(), s.value.clone()),
        ("sft", "lr", serde_json::json!(2e-4))
    );
    assert_eq!(
        Set::parse("a.b=true").unwrap().value,
        serde_json::json!(true)
    );
    assert_eq!(
        Set::parse("a.b=hello world").unwrap().value,
        serde_json::json!("hello world")
    );
    assert_eq!(Set::parse("a.b=").unwrap().value, serde_json::json!(""));
    assert!(
        Set::parse("a=1").is_err() && Set::parse("a.b").is_err() && Set::parse(".b=1").is_err()
    );
    let pl = p(
        "stages:\n  s:\n    cmd: echo ${params.lr}\n    params: {lr: 1}\n",
        &["s.lr=5"],
    )
    .unwrap();
    assert_eq!(pl.stages["s"].params["lr"], 5);
}

#[test]
fn errors_name_the_place_and_the_culprit() {
    let cases = [
        (
            "stages:\n  a:\n    cmd: x\n    uses: y\n",
            "forge.yaml:3:10: stage `a` has both `uses:` and `cmd:`",
        ),
        (
            "stages:\n  a:\n    needs: []\n",
            "forge.yaml:2:3: stage `a` needs either `uses:`",
        ),
        (
            "stages:\n  a:\n    cmd: cat ${stages.a}\n",
            "forge.yaml:3:10: stage `a` refers to itself",
        ),
        (
            "stages:\n  a:\n    cmd: x\n    deps: [../etc/passwd]\n",
            "must be a path inside the workspace",
        ),
        (
            "stages:\n  a:\n    cmd: x\n    deps: [artifacts/b]\n",
            "refer to it as ${stages.NAME}",
        ),
        (
            "vars: {v: '${vars.w}'}\nstages:\n  a:\n    cmd: x\n",
            "forge.yaml:1:11: var `v` may not contain",
        ),
        (
            "stages:\n  a b:\n    cmd: x\n",
            "forge.yaml:2:3: stage `a b`: names may hold only",
        ),
        (
            "stages:\n  a:\n    cmd: echo ${nope}\n",
            "unknown reference `${nope}`",
        ),
        (
            "stages:\n  a:\n    cmd: x\n    inputs: {d: plot.py}\n",
            "`inputs:` (d) is for built-in stages",
        ),
        ("stages:\n  a:\n    cmd: x\n    params: {flag: yes}\n", ""),
        (
            "stages:\n  a:\n    cmd: x\n    params: { p: ${vars.v} }\n",
            "forge.yaml:4:19: while parsing a flow mapping",
        ),
        (
            "stages:\n  a:\n    cmd: x\n    params: { p: ${vars.v} }\n",
            "quote values that hold `${...}`",
        ),
    ];
    for (yaml, needle) in cases {
        match p(yaml, &[]) {
            Err(e) => assert!(
                !needle.is_empty() && e.to_string().contains(needle),
                "{yaml}: {e}"
            ),
            Ok(pl) => {
                assert!(needle.is_empty(), "{yaml} should fail with {needle}");
                // Strict booleans: `yes` is a string, not true.
                assert_eq!(pl.stages["a"].params["flag"], "yes");
            }
        }
    }
}
