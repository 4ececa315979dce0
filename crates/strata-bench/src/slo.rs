//! Service-level objectives for CI gates: `--slo "p99<5ms,errors<0.1%,rps>10000"`.

use anyhow::{Context, bail};
use serde::Serialize;

use crate::report::EndpointReport;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// Latency at a percentile, µs.
    Percentile(f64),
    Max,
    Mean,
    /// Errors as a fraction of requests.
    ErrorRate,
    ErrorCount,
    Rps,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    pub text: String,
    /// Scope to one endpoint; `None` means all requests.
    pub endpoint: Option<String>,
    pub metric: Metric,
    pub op: Op,
    /// In the metric's unit: µs, a fraction, a count or requests/s.
    pub threshold: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct SloResult {
    pub objective: String,
    pub passed: bool,
    /// The measured value in the objective's unit (µs, fraction, count or req/s).
    pub actual: f64,
    pub actual_display: String,
}

/// Parses a comma-separated list of objectives.
pub fn parse(text: &str) -> anyhow::Result<Vec<Objective>> {
    text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_one).collect()
}

fn parse_one(text: &str) -> anyhow::Result<Objective> {
    let (scope, rest) = match text.split_once(':') {
        Some((endpoint, rest)) => (Some(endpoint.trim().to_string()), rest.trim()),
        None => (None, text),
    };
    let op_at =
        rest.find(['<', '>']).with_context(|| format!("objective `{text}`: expected METRIC<VALUE or METRIC>VALUE"))?;
    let (metric_text, op_and_value) = rest.split_at(op_at);
    let (op, value) = if let Some(v) = op_and_value.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = op_and_value.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = op_and_value.strip_prefix('<') {
        (Op::Lt, v)
    } else if let Some(v) = op_and_value.strip_prefix('>') {
        (Op::Gt, v)
    } else {
        bail!("objective `{text}`: no comparison");
    };
    let value = value.trim();
    let metric_name = metric_text.trim().to_ascii_lowercase();
    let (metric, threshold) = match metric_name.as_str() {
        "errors" | "error_rate" | "error-rate" => match value.strip_suffix('%') {
            Some(pct) => (Metric::ErrorRate, number(pct, text)? / 100.0),
            None => (Metric::ErrorCount, number(value, text)?),
        },
        "rps" | "throughput" => (Metric::Rps, number(value, text)?),
        "max" => (Metric::Max, latency(value, text)?),
        "mean" | "avg" => (Metric::Mean, latency(value, text)?),
        p if p.starts_with('p') => {
            let pct: f64 = p[1..]
                .parse()
                .with_context(|| format!("objective `{text}`: `{p}` is not a percentile like p99 or p99.9"))?;
            if !(0.0..=100.0).contains(&pct) {
                bail!("objective `{text}`: percentile out of range");
            }
            (Metric::Percentile(pct), latency(value, text)?)
        }
        other => {
            bail!("objective `{text}`: unknown metric `{other}` (use p50, p90, p99, p99.9, max, mean, errors, rps)")
        }
    };
    Ok(Objective { text: text.to_string(), endpoint: scope, metric, op, threshold })
}

fn number(text: &str, objective: &str) -> anyhow::Result<f64> {
    text.trim().parse().with_context(|| format!("objective `{objective}`: `{text}` is not a number"))
}

fn latency(text: &str, objective: &str) -> anyhow::Result<f64> {
    let d = crate::args::parse_duration(text).map_err(|e| anyhow::anyhow!("objective `{objective}`: {e}"))?;
    if !text.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("objective `{objective}`: give the latency a unit (us, ms or s)");
    }
    Ok(d.as_secs_f64() * 1e6)
}

impl Objective {
    pub fn evaluate(&self, totals: &EndpointReport, endpoints: &[EndpointReport]) -> SloResult {
        let scope = match &self.endpoint {
            None => Some(totals),
            Some(name) => endpoints.iter().find(|e| &e.name == name),
        };
        let Some(e) = scope else {
            return SloResult {
                objective: self.text.clone(),
                passed: false,
                actual: f64::NAN,
                actual_display: "no such endpoint in this scenario".to_string(),
            };
        };
        let actual = match self.metric {
            Metric::Percentile(p) => e.percentile_us(p) as f64,
            Metric::Max => e.latency.max_us as f64,
            Metric::Mean => e.latency.mean_us,
            Metric::ErrorRate => e.error_rate,
            Metric::ErrorCount => e.errors as f64,
            Metric::Rps => e.rps,
        };
        let passed = match self.op {
            Op::Lt => actual < self.threshold,
            Op::Le => actual <= self.threshold,
            Op::Gt => actual > self.threshold,
            Op::Ge => actual >= self.threshold,
        };
        let actual_display = match self.metric {
            Metric::Percentile(_) | Metric::Max | Metric::Mean => crate::progress::fmt_us(actual.round() as u64),
            Metric::ErrorRate => format!("{:.3}%", actual * 100.0),
            Metric::ErrorCount => format!("{actual:.0}"),
            Metric::Rps => format!("{actual:.1} req/s"),
        };
        SloResult { objective: self.text.clone(), passed, actual, actual_display }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let o = parse("p99<5ms, errors<0.1%,rps>10000, login:p99.9<=1s, errors<3, max<250us").expect("valid");
        assert_eq!(o[0].metric, Metric::Percentile(99.0));
        assert_eq!(o[0].threshold, 5_000.0);
        assert_eq!(o[1].metric, Metric::ErrorRate);
        assert!((o[1].threshold - 0.001).abs() < 1e-12);
        assert_eq!((o[2].metric, o[2].op, o[2].threshold), (Metric::Rps, Op::Gt, 10_000.0));
        assert_eq!(o[3].endpoint.as_deref(), Some("login"));
        assert_eq!((o[3].metric, o[3].op, o[3].threshold), (Metric::Percentile(99.9), Op::Le, 1e6));
        assert_eq!(o[4].metric, Metric::ErrorCount);
        assert_eq!(o[5].threshold, 250.0);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["p99", "p99<5", "latency<5ms", "p101<1ms", "rps>lots", "p99=5ms"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
