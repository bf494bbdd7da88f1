use super::*;

fn p(yaml: &str) -> Result<Pipeline, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plot.py"), "").unwrap();
    parse(yaml, Path::new("forge.yaml"), dir.path(), &[])
}

fn err(yaml: &str) -> String {
    p(yaml).unwrap_err().to_string()
}

#[test]
fn show_errors() {
    for y in [
        "stages:\n  a:\n    cmd: echo\n    cmdd: x\n",
        "stages:\n  a:\n    cmd: echo\n  a:\n    cmd: x\n",
        "stages:\n  a:\n    cmd: 3\n    params: {x: yes}\n    resources: {gpu: yes}\n",
    ] {
        println!("{}", err(y));
    }
}
