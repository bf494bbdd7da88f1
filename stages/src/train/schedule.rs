//! The learning rate of every optimizer step: linear warmup from zero, then cosine or linear
//! decay to zero, or constant — the schedules Axolotl (transformers) offers under those names.
//!
//! A pure function of the step, so that a resumed run sees exactly the rates an uninterrupted one
//! would have.

use serde::{Deserialize, Serialize};

/// The shape after warmup (`lr_scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

/// A learning-rate schedule over `total` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// `warmup_ratio` of `total` steps (rounded up) warm up.
    pub fn new(kind: ScheduleKind, peak: f64, warmup_ratio: f64, total: u64) -> Schedule {
        let warmup = ((warmup_ratio * total as f64).ceil() as u64).min(total);
        Schedule {
            kind,
            peak,
            warmup,
            total,
        }
    }

    /// The rate of step `step` (0-based). Warmup reaches the peak at its last step, rather than
    /// spending the first step at rate zero; the decay starts from the peak at the first step after
    /// warmup and ends one step short of zero.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = (step - self.warmup) as f64 / span as f64;
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Linear => self.peak * (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => {
                self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        for kind in [
            ScheduleKind::Cosine,
            ScheduleKind::Linear,
            ScheduleKind::Constant,
        ] {
            let s = Schedule::new(kind, 1e-3, 0.1, 100);
            assert_eq!(s.warmup, 10);
            assert!(close(s.lr(0), 1e-4), "{kind:?}");
            assert!(close(s.lr(4), 5e-4), "{kind:?}");
            assert!(close(s.lr(9), 1e-3), "{kind:?}");
            // The first step after warmup is at the peak for every shape.
            assert!(close(s.lr(10), 1e-3), "{kind:?}");
        }
        // A ratio that does not divide evenly rounds the warmup up.
        assert_eq!(Schedule::new(ScheduleKind::Cosine, 1.0, 0.03, 50).warmup, 2);
        assert_eq!(Schedule::new(ScheduleKind::Cosine, 1.0, 0.0, 50).warmup, 0);
    }

    #[test]
    fn cosine_halves_midway_and_ends_near_zero() {
        let s = Schedule::new(ScheduleKind::Cosine, 2e-4, 0.0, 100);
        assert!(close(s.lr(0), 2e-4));
        assert!(close(s.lr(50), 1e-4));
        assert!(close(s.lr(25), 1e-4 * (1.0 + 0.5f64.sqrt())));
        assert!(s.lr(99) > 0.0 && s.lr(99) < 1e-7);
        let rates: Vec<f64> = (0..100).map(|i| s.lr(i)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "strictly decreasing");
    }

    #[test]
    fn linear_decays_evenly_and_constant_stays() {
        let s = Schedule::new(ScheduleKind::Linear, 1.0, 0.2, 10);
        assert_eq!(s.warmup, 2);
        let decay: Vec<f64> = (2..10).map(|i| s.lr(i)).collect();
        let want = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        assert!(
            decay.iter().zip(want).all(|(a, b)| close(*a, b)),
            "{decay:?}"
        );
        let c = Schedule::new(ScheduleKind::Constant, 3e-4, 0.0, 10);
        assert!((0..10).all(|i| c.lr(i) == 3e-4));
        // Warmup over every step: the last step reaches the peak.
        let all = Schedule::new(ScheduleKind::Cosine, 1.0, 1.0, 4);
        assert_eq!(
            (0..4).map(|i| all.lr(i)).collect::<Vec<_>>(),
            [0.25, 0.5, 0.75, 1.0]
        );
    }
}
