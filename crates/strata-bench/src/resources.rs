//! CPU, memory and thread sampling from /proc, for the generator itself and for the processes
//! named with `--watch-pid`.
//!
//! CPU time comes from `/proc/PID/stat` (utime + stime in clock ticks; USER_HZ is 100 on every
//! Linux ABI that matters, so it is not looked up) and RSS/threads from `/proc/PID/status`.
//! CPU % is per core, as `top` shows it: 200% is two cores busy.

use std::time::Instant;

use serde::Serialize;

const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ResourcePoint {
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    pub threads: u64,
}

struct Raw {
    cpu_ticks: u64,
    rss_bytes: u64,
    threads: u64,
}

fn read_raw(pid: Option<u32>) -> Option<Raw> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let field = |key: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some(Raw {
        cpu_ticks: utime + stime,
        rss_bytes: field("VmRSS:").unwrap_or(0) * 1024,
        threads: field("Threads:").unwrap_or(0),
    })
}

/// Turns successive CPU-time readings of one process into CPU %.
pub struct ProcessSampler {
    pub pid: Option<u32>,
    last: Option<(Instant, u64)>,
}

impl ProcessSampler {
    /// `None` samples this process.
    pub fn new(pid: Option<u32>) -> Self {
        let mut sampler = Self { pid, last: None };
        sampler.sample();
        sampler
    }

    /// The usage since the previous call; `None` once the process is gone.
    pub fn sample(&mut self) -> Option<ResourcePoint> {
        let raw = read_raw(self.pid)?;
        let now = Instant::now();
        let cpu_pct = match self.last {
            Some((at, ticks)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    raw.cpu_ticks.saturating_sub(ticks) as f64 / TICKS_PER_SECOND / wall * 100.0
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, raw.cpu_ticks));
        Some(ResourcePoint { cpu_pct: (cpu_pct * 10.0).round() / 10.0, rss_bytes: raw.rss_bytes, threads: raw.threads })
    }
}

pub fn process_exists(pid: u32) -> bool {
    read_raw(Some(pid)).is_some()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let mut own = ProcessSampler::new(None);
        // Burn a little CPU so the second reading has something to show.
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let point = own.sample().expect("/proc/self is readable");
        assert!(point.rss_bytes > 0);
        assert!(point.threads >= 1);
        assert!(point.cpu_pct >= 0.0);
        assert!(process_exists(std::process::id()));
        assert!(ProcessSampler::new(Some(u32::MAX)).sample().is_none());
    }
}
