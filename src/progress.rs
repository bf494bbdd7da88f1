//! What `forge run` shows while it works.
//!
//! On a terminal: one live line per running stage (indicatif), with the stage's own steps, ETA and
//! message when it reports them. Otherwise: plain lines, progress throttled, so logs stay readable.
//! Result lines (`ran`, `fresh`, ...) go to stdout either way; progress goes to stderr.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    multi: Option<MultiProgress>,
    /// Width of the stage-name column.
    pub width: usize,
}

const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Ui {
    pub fn new(width: usize) -> Ui {
        let multi = std::io::stdout()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Ui { multi, width }
    }

    /// A result line: `ran      sft      12.1s  ...`.
    pub fn result(&self, status: &str, stage: &str, detail: &str) {
        let detail = detail.replace('\n', " ");
        let line = format!("{status:<8} {stage:<w$}  {detail}", w = self.width);
        let line = line.trim_end();
        match &self.multi {
            Some(m) => {
                m.suspend(|| println!("{line}"));
            }
            None => println!("{line}"),
        }
    }

    /// Text on stderr that must not tear the live lines (failure tails, warnings).
    pub fn note(&self, text: &str) {
        match &self.multi {
            Some(m) => m.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    pub fn start(&self, stage: &str) -> StageProgress {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:<w$} {elapsed:>4} {msg}"
                        .replace("w$", &self.width.to_string())
                        .as_str(),
                )
                .expect("valid template"),
            );
            bar.set_prefix(stage.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        StageProgress {
            stage: stage.to_string(),
            bar,
            started: Instant::now(),
            last_plain: Mutex::new(Instant::now()),
        }
    }
}

/// The live line of one running stage.
pub struct StageProgress {
    stage: String,
    bar: Option<ProgressBar>,
    started: Instant,
    last_plain: Mutex<Instant>,
}

impl StageProgress {
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn eta(elapsed: Duration, done: u64, total: u64) -> Option<Duration> {
    (done > 0 && total > done).then(|| elapsed.mul_f64((total - done) as f64 / done as f64))
}

impl forge_stages::Progress for StageProgress {
    fn update(&self, done: u64, total: Option<u64>, message: &str) {
        let steps = match total {
            Some(t) => {
                let eta = eta(self.started.elapsed(), done, t)
                    .map(|d| format!(" ETA {}s", d.as_secs()))
                    .unwrap_or_default();
                format!("{done}/{t}{eta}")
            }
            None => done.to_string(),
        };
        let text = if message.is_empty() {
            steps
        } else {
            format!("{steps} {message}")
        };
        match &self.bar {
            Some(b) => b.set_message(text),
            None => {
                let mut last = self.last_plain.lock().expect("progress lock");
                if last.elapsed() >= PLAIN_EVERY || total == Some(done) {
                    *last = Instant::now();
                    eprintln!("[{}] {text}", self.stage);
                }
            }
        }
    }
}

/// Parses a progress line a command stage printed: `::progress:: DONE[/TOTAL] [MESSAGE]`.
pub fn parse_progress_line(line: &str) -> Option<(u64, Option<u64>, &str)> {
    let rest = line.strip_prefix("::progress::")?.trim_start();
    let (steps, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let (done, total) = match steps.split_once('/') {
        Some((d, t)) => (d.parse().ok()?, Some(t.parse().ok()?)),
        None => (steps.parse().ok()?, None),
    };
    Some((done, total, message.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress_line("::progress:: 3/10 loss=0.5"),
            Some((3, Some(10), "loss=0.5"))
        );
        assert_eq!(parse_progress_line("::progress:: 7"), Some((7, None, "")));
        assert_eq!(parse_progress_line("::progress:: x/10"), None);
        assert_eq!(parse_progress_line("progress 3/10"), None);
    }

    #[test]
    fn eta_extrapolates_linearly() {
        assert_eq!(
            eta(Duration::from_secs(10), 1, 4),
            Some(Duration::from_secs(30))
        );
        assert_eq!(eta(Duration::from_secs(10), 0, 4), None);
    }
}
