//! Times forge's BFCL scoring of a whole results file, as `forge bfcl score` runs it:
//! `bfcl_score DATA_DIR RESULTS [RUNS]`. Each run is a full `score_results` (read the data and
//! the results, decode, check, aggregate); the report of the last run is printed first, then
//! one line per run and the median. Built and driven by `bench/bfcl/run.sh`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use forge_stages::eval::score_results;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bfcl_score DATA_DIR RESULTS [RUNS]");
        return ExitCode::from(2);
    }
    let runs: usize = args
        .get(3)
        .and_then(|r| r.parse().ok())
        .unwrap_or(10)
        .max(1);
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        match score_results(Path::new(&args[1]), Path::new(&args[2]), None, None) {
            Ok(scores) => last = Some(scores),
            Err(e) => {
                eprintln!("bfcl_score: {e}");
                return ExitCode::from(1);
            }
        }
        times.push(start.elapsed());
    }
    let scores = last.expect("at least one run");
    print!("{}", scores.to_report_md());
    println!();
    for (i, t) in times.iter().enumerate() {
        println!("run {}: {:.1} ms", i + 1, t.as_secs_f64() * 1e3);
    }
    times.sort();
    println!(
        "entries: {}; median {:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs",
        scores.entries.len(),
        times[runs / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[runs - 1].as_secs_f64() * 1e3,
    );
    ExitCode::SUCCESS
}
