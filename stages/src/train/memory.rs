//! Peak memory of a training run, as far as each device lets a process see it.
//!
//! - CPU: the process's peak resident set (`VmHWM` in `/proc/self/status`), exact but
//!   process-wide: in `forge run` it also covers the stages that ran before in the same process.
//! - CUDA: device memory in use (`total − free` from `cuMemGetInfo`) minus what was in use when
//!   the probe was created, sampled after each step's work is queued and before the step's one
//!   synchronization. candle allocates from CUDA's stream-ordered pool, which only gives memory
//!   back at synchronizations, so that sample is the step's high-water mark of the pool — closer
//!   to PyTorch's `max_memory_reserved` than to `max_memory_allocated`.

use candle_core::Device;

/// Samples a device's memory use and keeps the peak.
#[derive(Debug)]
pub struct MemoryProbe {
    device: Device,
    baseline: u64,
    peak: Option<u64>,
}

impl MemoryProbe {
    pub fn new(device: &Device) -> MemoryProbe {
        let baseline = match device {
            Device::Cuda(_) => used(device).unwrap_or(0),
            _ => 0,
        };
        MemoryProbe {
            device: device.clone(),
            baseline,
            peak: None,
        }
    }

    pub fn sample(&mut self) {
        if let Some(now) = used(&self.device) {
            let now = now.saturating_sub(self.baseline);
            self.peak = Some(self.peak.map_or(now, |p| p.max(now)));
        }
    }

    /// The peak in bytes, if the device could be measured.
    pub fn peak_bytes(&self) -> Option<u64> {
        self.peak
    }

    /// What [`MemoryProbe::peak_bytes`] measures, for metrics.json.
    pub fn measures(&self) -> &'static str {
        match self.device {
            Device::Cuda(_) => {
                "device memory in use (cuMemGetInfo total - free) above the start, after each step"
            }
            _ => "peak resident set of the process (VmHWM)",
        }
    }
}

fn used(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => peak_rss(),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
            Some((total - free) as u64)
        }
        _ => None,
    }
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
