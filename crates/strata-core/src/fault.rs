//! Induced bottlenecks for the `strata bench --analyze` accuracy suite
//! (`bench/bottlenecks/`): a lock held across an await, a blocking sleep on an async worker,
//! a slow database call, a cache that never forgets. They are read from
//! `STRATA_FAULT_INJECT` (e.g. `app_lock=2ms,db_delay=5ms`) only in builds with the
//! `fault-injection` cargo feature, which release builds do not have: the parser is always
//! compiled (and unit-tested), the switch that reads the environment is not.

use std::time::Duration;

/// The faults one process injects; all off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every `/v1` request holds one process-wide async mutex for this long (awaiting, not
    /// spinning): serialisation with idle CPUs.
    pub app_lock: Option<Duration>,
    /// Every `/v1` request blocks its async worker thread this long (`std::thread::sleep`).
    pub app_blocking: Option<Duration>,
    /// Every database connection is held this long after it is acquired, before its query:
    /// a slow query as the pool and the query histograms see it.
    pub db_delay: Option<Duration>,
    /// Every `/v1` request adds this many bytes to a cache that is never evicted.
    pub mem_leak_bytes: Option<usize>,
}

impl Faults {
    /// Parses `name=value` pairs separated by commas; durations in `us`, `ms` or `s`, sizes
    /// in bytes or with `KiB`/`MiB`.
    pub fn parse(text: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected NAME=VALUE"))?;
            match name.trim() {
                "app_lock" => faults.app_lock = Some(duration(value)?),
                "app_blocking" => faults.app_blocking = Some(duration(value)?),
                "db_delay" => faults.db_delay = Some(duration(value)?),
                "mem_leak" => faults.mem_leak_bytes = Some(bytes(value)?),
                other => return Err(format!("unknown fault `{other}` (app_lock, app_blocking, db_delay, mem_leak)")),
            }
        }
        Ok(faults)
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("`{text}`: a duration needs a unit (us, ms, s)"));
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("`{text}` is not a duration"))?;
    if !(value.is_finite() && value >= 0.0 && value * scale <= 60.0) {
        return Err(format!("`{text}` is out of range (0 to 60 s)"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = text.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (text, 1)
    };
    number.trim().parse::<usize>().map(|n| n * scale).map_err(|_| format!("`{text}` is not a size"))
}

/// The process's faults, read once from `STRATA_FAULT_INJECT`. A malformed value is fatal:
/// a test that asked for a fault must not silently run without it.
#[cfg(feature = "fault-injection")]
pub fn get() -> &'static Faults {
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| match std::env::var("STRATA_FAULT_INJECT") {
        Ok(text) => Faults::parse(&text).unwrap_or_else(|e| panic!("STRATA_FAULT_INJECT: {e}")),
        Err(_) => Faults::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault() {
        let f = Faults::parse("app_lock=2ms, app_blocking=500us,db_delay=0.5s,mem_leak=64KiB").unwrap();
        assert_eq!(f.app_lock, Some(Duration::from_millis(2)));
        assert_eq!(f.app_blocking, Some(Duration::from_micros(500)));
        assert_eq!(f.db_delay, Some(Duration::from_millis(500)));
        assert_eq!(f.mem_leak_bytes, Some(65536));
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(Faults::parse("app_lock").is_err());
        assert!(Faults::parse("app_lock=2").is_err());
        assert!(Faults::parse("disk_full=1s").is_err());
        assert!(Faults::parse("db_delay=-1ms").is_err());
        assert!(Faults::parse("db_delay=2h").is_err());
        assert!(Faults::parse("mem_leak=lots").is_err());
    }
}
