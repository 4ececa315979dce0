//! The `--html` report: one self-contained file (inline CSS, inline SVG plots drawn here in
//! Rust, a few lines of inline script that only self-check the page), so it opens offline and
//! can be attached to a CI run.

use std::fmt::Write as _;

use crate::progress::{fmt_bytes, fmt_us};
use crate::report::Report;

const COLORS: [&str; 8] = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Copy)]
pub enum XAxis {
    Seconds,
    /// Percentiles on a "number of nines" scale: 0 → 0%, 1 → 90%, 2 → 99%, … (HdrHistogram style).
    Nines,
    Linear,
}

/// Round tick spacing (1, 2 or 5 × 10ⁿ) giving about `target` ticks over `span`.
pub fn nice_step(span: f64, target: usize) -> f64 {
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let residual = raw / magnitude;
    let nice = if residual <= 1.0 {
        1.0
    } else if residual <= 2.0 {
        2.0
    } else if residual <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

pub fn nines(percentile: f64) -> f64 {
    if percentile >= 100.0 { 5.0 } else { (-(1.0 - percentile / 100.0).log10()).min(5.0) }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

/// A line chart as inline SVG.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, x_axis: XAxis, series: &[Series]) -> String {
    let mut svg = String::new();
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let _ = write!(
        svg,
        r#"<figure><svg class="plot" role="img" aria-label="{t}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg"><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = escape(title)
    );
    if all.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no data</text></svg></figure>"#,
            WIDTH / 2.0 - 30.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = match x_axis {
        XAxis::Nines => (0.0, 5.0),
        _ => (
            all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min),
            all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max),
        ),
    };
    if matches!(x_axis, XAxis::Seconds) {
        x0 = x0.min(0.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_step = nice_step(if y_max > 0.0 { y_max } else { 1.0 }, 5);
    let y1 = ((y_max / y_step).floor() + 1.0) * y_step;
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y / y1) * ph;
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y1 + y_step * 0.01 {
        let py = sy(y);
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_tick(y)
        );
        y += y_step;
    }
    // X ticks.
    let x_ticks: Vec<(f64, String)> = match x_axis {
        XAxis::Nines => ["0%", "90%", "99%", "99.9%", "99.99%", "max"]
            .iter()
            .enumerate()
            .map(|(i, l)| (i as f64, l.to_string()))
            .collect(),
        _ => {
            let step = nice_step(x1 - x0, 8);
            let mut ticks = Vec::new();
            let mut x = (x0 / step).ceil() * step;
            while x <= x1 + step * 0.01 {
                ticks.push((x, fmt_tick(x)));
                x += step;
            }
            ticks
        }
    };
    for (x, label) in x_ticks {
        let px = sx(x);
        let _ = write!(
            svg,
            r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" class="grid"/><text x="{px:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + ph,
            TOP + ph + 16.0,
            escape(&label)
        );
    }
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}" class="axis"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" class="axis"/>"#,
        WIDTH - RIGHT,
        b = TOP + ph
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 6.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" class="label" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );
    let mut legend_x = WIDTH - RIGHT;
    for (i, s) in series.iter().enumerate().rev() {
        let color = COLORS[i % COLORS.len()];
        legend_x -= 14.0 + 7.0 * s.name.chars().count() as f64 + 14.0;
        let _ = write!(
            svg,
            r#"<rect x="{legend_x:.1}" y="9" width="10" height="10" fill="{color}"/><text x="{:.1}" y="18" class="legend">{}</text>"#,
            legend_x + 14.0,
            escape(&s.name)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if points.len() == 1 {
            let _ = write!(svg, r#"<circle cx="{}" r="3" fill="{color}"/>"#, points[0].replace(',', "\" cy=\""));
        }
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            points.join(" "),
            escape(&s.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The report's stylesheet (inline in [`render`], to be served for [`render_linked`]).
pub const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#111827;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.meta{color:#4b5563}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:right}th{background:#f9fafb}
td:first-child,th:first-child{text-align:left}
.pass{color:#15803d;font-weight:600}.fail{color:#b91c1c;font-weight:600}.warn{background:#fef3c7;padding:8px;border-radius:6px}
figure{margin:10px 0}
svg.plot{max-width:100%;height:auto;background:#fff;border:1px solid #e5e7eb;border-radius:6px}
svg .grid{stroke:#f1f5f9}svg .axis{stroke:#9ca3af}svg .tick{font-size:11px;fill:#4b5563}svg .label{font-size:12px;fill:#374151}
svg .title{font-size:13px;font-weight:600;fill:#111827}svg .legend{font-size:11px;fill:#374151}svg .empty{fill:#9ca3af}
"#;

/// Checks, in the browser, that every plot drew a visible line; the result lands in
/// `<body data-check>` where `bench/check-html-report.sh` reads it back with --dump-dom.
const SELF_CHECK: &str = r#"
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message));document.body.setAttribute('data-errors',errors.join(' | '));});
  window.addEventListener('load',function(){
    var plots=document.querySelectorAll('svg.plot');var drawn=0;
    for(var i=0;i<plots.length;i++){
      var lines=plots[i].querySelectorAll('polyline.series');var ok=false;
      for(var j=0;j<lines.length;j++){var b=lines[j].getBBox();if(lines[j].points.numberOfItems>1&&(b.width>0||b.height>0)){ok=true;}}
      if(ok){drawn++;}
    }
    document.body.setAttribute('data-plots',String(plots.length));
    document.body.setAttribute('data-plots-drawn',String(drawn));
    document.body.setAttribute('data-check',(plots.length>0&&drawn===plots.length&&errors.length===0)?'ok':'failed');
  });
})();
"#;

/// How a page gets its style (and self-check).
enum Head<'a> {
    /// Inline `<style>` and the self-check `<script>`: one file that opens anywhere.
    Inline,
    /// `<link rel="stylesheet">` to this address and no script: for pages under a strict
    /// Content-Security-Policy.
    Linked(&'a str),
}

/// The standalone report (`--html`).
pub fn render(r: &Report) -> String {
    document(r, Head::Inline)
}

/// The same report for a page under a strict Content-Security-Policy (the admin console):
/// the stylesheet linked from `stylesheet_href`, where [`STYLE`] must be served, and no
/// script, the self-check being for the standalone file that CI loads.
pub fn render_linked(r: &Report, stylesheet_href: &str) -> String {
    document(r, Head::Linked(stylesheet_href))
}

fn document(r: &Report, head: Head<'_>) -> String {
    let mut h = String::new();
    let c = &r.config;
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>strata bench: {}</title>",
        escape(&c.scenario)
    );
    match head {
        Head::Inline => {
            let _ = write!(h, "<style>{STYLE}</style><script>{SELF_CHECK}</script>");
        }
        Head::Linked(href) => {
            let _ = write!(h, "<link rel=\"stylesheet\" href=\"{}\">", escape(href));
        }
    }
    h.push_str("</head><body>");
    let _ = write!(
        h,
        "<h1>strata bench: <code>{}</code></h1><p class=\"meta\">target {} · {} model · {} · measured {:.1}s (warm-up {:.1}s) · {} iterations · run {}</p>",
        escape(&c.scenario),
        escape(&c.target),
        c.model,
        match (c.model.as_str(), &c.stages, c.rate) {
            _ if c.find_max =>
                format!("find-max from {} req/s, up to {} connections", c.rate.unwrap_or(100.0), c.connections),
            (_, Some(s), _) => format!("stages {}", escape(s)),
            ("open", None, Some(rate)) => format!("{rate} req/s offered, up to {} connections", c.connections),
            _ => format!("{} connections", c.connections),
        },
        r.measured_s,
        c.warmup_s,
        r.iterations,
        escape(&c.run_id)
    );
    if r.client.generator_bound {
        h.push_str("<p class=\"warn\">⚠ The generator was the bottleneck (its CPU was saturated): these figures describe the client, not the server.</p>");
    }
    if let Some(w) = crate::report::schedule_warning(r) {
        let _ = write!(h, "<p class=\"warn\">⚠ {}</p>", escape(&w));
    }
    if !r.slo.is_empty() {
        h.push_str("<h2>Objectives</h2><table><tr><th>objective</th><th>result</th><th>actual</th></tr>");
        for s in &r.slo {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                escape(&s.objective),
                if s.passed { "pass" } else { "fail" },
                if s.passed { "PASS" } else { "FAIL" },
                escape(&s.actual_display)
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Endpoints</h2><table><tr><th>endpoint</th><th>requests</th><th>req/s</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>bytes in</th><th>bytes out</th><th>Server-Timing (mean ms)</th></tr>");
    for e in r.endpoints.iter().chain(std::iter::once(&r.totals)) {
        let timing: Vec<String> = e.server_timing_ms.iter().map(|(k, v)| format!("{} {v:.3}", escape(k))).collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{} ({:.2}%)</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.name),
            e.requests,
            e.rps,
            e.errors,
            e.error_rate * 100.0,
            fmt_us(e.latency.p50_us),
            fmt_us(e.latency.p90_us),
            fmt_us(e.latency.p99_us),
            fmt_us(e.latency.p999_us),
            fmt_us(e.latency.max_us),
            fmt_bytes(e.bytes_in),
            fmt_bytes(e.bytes_out),
            timing.join(", ")
        );
    }
    h.push_str("</table>");
    if !r.totals.errors_by_kind.is_empty() {
        let kinds: Vec<String> = r.totals.errors_by_kind.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = write!(h, "<p>Errors by kind: {}</p>", escape(&kinds.join(", ")));
    }
    if let Some(s) = &r.schedule {
        let _ = write!(
            h,
            "<p>Schedule: {} late sends (&gt;2 ms behind; {} waited for a free connection), max lag {}, {} never sent.</p>",
            s.late_sends,
            s.queued_sends,
            fmt_us(s.max_lag_us),
            s.unsent
        );
    }

    let ts = &r.timeseries;
    h.push_str("<h2>Throughput and latency over time</h2>");
    let mut throughput =
        vec![Series { name: "achieved req/s".into(), points: ts.iter().map(|s| (s.t_s, s.total.rps)).collect() }];
    let multi_step = r.iterations > 0 && r.totals.requests > r.iterations + r.iterations / 10;
    if multi_step {
        throughput.push(Series {
            name: "iterations/s".into(),
            points: ts.iter().map(|s| (s.t_s, s.iterations as f64)).collect(),
        });
    }
    if ts.iter().any(|s| s.offered_rps.is_some()) {
        throughput.push(Series {
            name: if multi_step { "offered iterations/s" } else { "offered req/s" }.into(),
            points: ts.iter().filter_map(|s| s.offered_rps.map(|o| (s.t_s, o))).collect(),
        });
    }
    throughput
        .push(Series { name: "errors/s".into(), points: ts.iter().map(|s| (s.t_s, s.total.errors as f64)).collect() });
    h.push_str(&line_chart("Throughput", "seconds", "requests per second", XAxis::Seconds, &throughput));
    let latency = vec![
        Series { name: "p50".into(), points: ts.iter().map(|s| (s.t_s, s.total.p50_us as f64 / 1e3)).collect() },
        Series { name: "p99".into(), points: ts.iter().map(|s| (s.t_s, s.total.p99_us as f64 / 1e3)).collect() },
        Series { name: "max".into(), points: ts.iter().map(|s| (s.t_s, s.total.max_us as f64 / 1e3)).collect() },
    ];
    h.push_str(&line_chart("Latency per second", "seconds", "milliseconds", XAxis::Seconds, &latency));

    h.push_str("<h2>Latency distribution</h2>");
    let mut dist = vec![Series {
        name: "all".into(),
        points: r.latency_distribution.iter().map(|p| (nines(p.percentile), p.latency_us as f64 / 1e3)).collect(),
    }];
    if r.endpoints.len() > 1 {
        for e in r.endpoints.iter().take(COLORS.len() - 1) {
            dist.push(Series {
                name: e.name.clone(),
                points: e
                    .latency_distribution
                    .iter()
                    .map(|p| (nines(p.percentile), p.latency_us as f64 / 1e3))
                    .collect(),
            });
        }
    }
    h.push_str(&line_chart("Latency by percentile", "percentile", "milliseconds", XAxis::Nines, &dist));

    h.push_str("<h2>Resources</h2>");
    let mut cpu = vec![Series {
        name: "client".into(),
        points: ts.iter().filter_map(|s| s.client.map(|c| (s.t_s, c.cpu_pct))).collect(),
    }];
    let mut rss = vec![Series {
        name: "client".into(),
        points: ts.iter().filter_map(|s| s.client.map(|c| (s.t_s, c.rss_bytes as f64 / 1048576.0))).collect(),
    }];
    for (i, t) in r.targets.iter().enumerate() {
        cpu.push(Series {
            name: format!("pid {}", t.pid),
            points: ts.iter().filter_map(|s| s.targets.get(i).copied().flatten().map(|p| (s.t_s, p.cpu_pct))).collect(),
        });
        rss.push(Series {
            name: format!("pid {}", t.pid),
            points: ts
                .iter()
                .filter_map(|s| s.targets.get(i).copied().flatten().map(|p| (s.t_s, p.rss_bytes as f64 / 1048576.0)))
                .collect(),
        });
    }
    h.push_str(&line_chart("CPU (100% = one core)", "seconds", "CPU %", XAxis::Seconds, &cpu));
    h.push_str(&line_chart("Resident memory", "seconds", "MiB", XAxis::Seconds, &rss));
    if !r.targets.is_empty() {
        h.push_str(
            "<table><tr><th>process</th><th>cpu mean</th><th>cpu max</th><th>rss max</th><th>threads max</th></tr>",
        );
        let _ = write!(
            h,
            "<tr><td>client (strata bench)</td><td>{:.0}%</td><td>{:.0}%</td><td>{}</td><td></td></tr>",
            r.client.cpu_pct_mean,
            r.client.cpu_pct_max,
            fmt_bytes(r.client.rss_max_bytes)
        );
        for t in &r.targets {
            let _ = write!(
                h,
                "<tr><td>pid {}</td><td>{:.0}%</td><td>{:.0}%</td><td>{}</td><td>{}</td></tr>",
                t.pid,
                t.cpu_pct_mean,
                t.cpu_pct_max,
                fmt_bytes(t.rss_max_bytes),
                t.threads_max
            );
        }
        h.push_str("</table>");
    }

    if let Some(f) = &r.find_max {
        h.push_str("<h2>Find max</h2>");
        let series = vec![
            Series { name: "offered".into(), points: f.steps.iter().map(|s| (s.offered_rps, s.offered_rps)).collect() },
            Series {
                name: "achieved".into(),
                points: f.steps.iter().map(|s| (s.offered_rps, s.achieved_rps)).collect(),
            },
        ];
        h.push_str(&line_chart("Achieved vs offered load", "offered req/s", "req/s", XAxis::Linear, &series));
        let _ = write!(
            h,
            "<p>Knee: <b>{}</b> ({})</p>",
            f.knee_rps.map(|k| format!("{k:.1} req/s")).unwrap_or_else(|| "none".into()),
            escape(&f.stop_reason)
        );
    }

    if let Some(a) = &r.analysis
        && !r.steps.is_empty()
    {
        verdict_section(&mut h, a, &r.steps);
    }

    if let Some(s) = &r.server {
        h.push_str("<h2>Server metrics during the run</h2>");
        if s.available {
            h.push_str("<table><tr><th>route</th><th>method</th><th>status</th><th>requests</th><th>mean</th><th>p50</th><th>p99</th></tr>");
            let ms = |v: Option<f64>| v.map(|v| format!("{v:.3} ms")).unwrap_or_else(|| "–".into());
            for route in &s.routes {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&route.route),
                    escape(&route.method),
                    escape(&route.status),
                    route.requests,
                    ms(route.mean_ms),
                    ms(route.p50_ms),
                    ms(route.p99_ms)
                );
            }
            h.push_str("</table>");
            if !s.db.is_empty() {
                h.push_str("<table><tr><th>db operation</th><th>queries</th><th>mean</th><th>p99</th></tr>");
                for d in &s.db {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(&d.op),
                        d.queries,
                        ms(d.mean_ms),
                        ms(d.p99_ms)
                    );
                }
                h.push_str("</table>");
            }
        } else {
            let _ = write!(h, "<p>Unavailable: {}</p>", escape(s.error.as_deref().unwrap_or("unknown")));
        }
    }
    let _ =
        writeln!(h, "<p class=\"meta\">schema {} · strata-bench {}</p></body></html>", r.schema, r.generator_version);
    h
}

/// `--analyze`: the verdict, the evidence table and the per-step plots it rests on.
fn verdict_section(h: &mut String, a: &crate::analyze::Analysis, steps: &[crate::probe::StepProbe]) {
    let _ = write!(
        h,
        "<h2 id=\"verdict\">Bottleneck verdict</h2><p class=\"verdict\">verdict: <b>{}</b> (confidence {:.0}%){}</p><p>{}</p>",
        escape(&a.verdict),
        a.confidence * 100.0,
        a.runner_up.as_ref().map(|r| format!("; runner-up {}", escape(r))).unwrap_or_default(),
        escape(&a.suggestion)
    );
    h.push_str("<table><tr><th>predicate</th><th>at the saturated step</th><th>baseline</th><th>strength</th><th>evidence</th></tr>");
    for e in &a.evidence {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
            escape(&e.predicate),
            e.value,
            e.baseline,
            e.strength,
            escape(&e.text)
        );
    }
    h.push_str("</table>");
    let per_step = |name: &str, f: &dyn Fn(&crate::probe::StepProbe) -> Option<f64>| Series {
        name: name.into(),
        points: steps.iter().filter_map(|s| Some((s.offered_rps, f(s)?))).collect(),
    };
    let x = "offered req/s";
    h.push_str(&line_chart(
        "Throughput and p99 by step",
        x,
        "req/s · ms",
        XAxis::Linear,
        &[per_step("achieved req/s", &|s| Some(s.achieved_rps)), per_step("p99 ms", &|s| Some(s.p99_us as f64 / 1e3))],
    ));
    h.push_str(&line_chart(
        "Utilisation by step (0–1)",
        x,
        "share",
        XAxis::Linear,
        &[
            per_step("server cpu", &|s| Some(s.target_cpu_cores? / s.target_cpu_limit?.max(0.01))),
            per_step("generator cpu", &|s| Some(s.client_cpu_cores / s.client_cpu_limit.max(0.01))),
            per_step("tokio busy", &|s| s.server.as_ref()?.runtime_busy),
            per_step("cache hit ratio", &|s| s.server.as_ref()?.cache_hit_ratio),
            per_step("rss / memory limit", &|s| Some(s.target_rss_bytes? as f64 / s.target_memory_limit? as f64)),
        ],
    ));
    h.push_str(&line_chart(
        "Where a request's time goes, by step (ms)",
        x,
        "ms per request",
        XAxis::Linear,
        &[
            per_step("client latency", &|s| Some(s.mean_ms)),
            per_step("inside the server", &|s| Some(s.server.as_ref()?.mean_ms)),
            per_step("storage (connection held)", &|s| Some(s.server.as_ref()?.db_ms_per_request)),
            per_step("pool wait", &|s| Some(s.server.as_ref()?.pool_wait_ms_per_request)),
        ],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5), 2.0);
        assert_eq!(nice_step(1000.0, 5), 200.0);
        assert_eq!(nice_step(7.0, 5), 2.0);
        assert_eq!(nice_step(0.0, 5), 1.0);
    }

    #[test]
    fn nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 5.0);
    }

    #[test]
    fn chart_escapes_and_draws_every_series() {
        let svg = line_chart(
            "<t>",
            "x",
            "y",
            XAxis::Seconds,
            &[
                Series { name: "a&b".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] },
                Series { name: "c".into(), points: vec![(0.0, 3.0), (1.0, 0.5)] },
            ],
        );
        assert!(svg.contains("&lt;t&gt;") && svg.contains("a&amp;b"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(line_chart("t", "x", "y", XAxis::Seconds, &[]).contains("no data"));
    }
}
