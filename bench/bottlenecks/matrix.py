#!/usr/bin/env python3
"""The confusion matrix of `strata bench --analyze` over a bench/bottlenecks/run.sh directory.

    python3 bench/bottlenecks/matrix.py DIR [--markdown]

Reads DIR/runs.tsv (scenario, truth, severity, repetition, last line) and each run's JSON
report (for the runner-up and the two simple baselines). Thresholds are tuned on severities
1 and 3; the held-out set is severity 2 of the single bottlenecks plus every run of the
combinations (a combination's truth is either of its two labels). Prints, for the held-out
set and for the tuning set: the matrix with counts, per-class precision and recall,
accuracy, top-2 accuracy, the share abstained, calibration (stated confidence against
observed accuracy), the false-verdict rate on `none`, and the same matrix figures for the
baselines argmax-utilisation and argmax-service-demand. Standard library only.
"""
import json
import os
import re
import sys
from collections import Counter, defaultdict

LABELS = ["generator", "network", "server_cpu", "server_memory", "db_pool", "db_server", "cache",
          "app_lock", "app_blocking", "none", "abstain"]


def load(directory):
    runs = []
    with open(os.path.join(directory, "runs.tsv")) as f:
        for line in f:
            scenario, truth, sev, rep, last = line.rstrip("\n").split("\t")
            m = re.match(r"verdict: (\S+) \(confidence (\d+)%\)", last)
            verdict, conf = (m.group(1), int(m.group(2)) / 100) if m else ("abstain", 0.0)
            report = os.path.join(directory, f"{scenario}-s{sev}-r{rep}.json")
            runner_up, base_util, base_demand = None, "abstain", "abstain"
            if m and os.path.exists(report):
                a = json.load(open(report)).get("analysis") or {}
                runner_up = a.get("runner_up")
                base_util = a.get("baseline_utilisation", "abstain")
                base_demand = a.get("baseline_demand", "abstain")
            runs.append(dict(scenario=scenario, truth=set(truth.split("+")), combo="+" in truth,
                             sev=int(sev), verdict=verdict, conf=conf, runner_up=runner_up,
                             base_util=base_util, base_demand=base_demand, failed=not m))
    return runs


def figures(runs, key, out, title, markdown):
    if not runs:
        return
    p = lambda *a: print(*a, file=out)
    n = len(runs)
    correct = sum(r[key] in r["truth"] for r in runs)
    abstained = sum(r[key] == "abstain" for r in runs)
    top2 = sum(r[key] in r["truth"] or (key == "verdict" and r["runner_up"] in r["truth"]) for r in runs)
    none_runs = [r for r in runs if r["truth"] == {"none"}]
    false_on_none = sum(r[key] not in ("none", "abstain") for r in none_runs)
    p(f"\n### {title}\n")
    p(f"runs {n}: accuracy {correct / n:.1%}, top-2 {top2 / n:.1%}, abstained {abstained / n:.1%}, "
      f"false verdicts on `none` {false_on_none}/{len(none_runs)}")
    truths = [t for t in LABELS if any(t in r["truth"] and not r["combo"] for r in runs)]
    if any(r["combo"] for r in runs):
        truths += sorted({"+".join(sorted(r["truth"])) for r in runs if r["combo"]})
    predicted = [l for l in LABELS if any(r[key] == l for r in runs)]
    counts = Counter(("+".join(sorted(r["truth"])), r[key]) for r in runs)
    p("")
    p("| truth \\ verdict | " + " | ".join(predicted) + " |")
    p("|---" * (len(predicted) + 1) + "|")
    for t in truths:
        p(f"| {t} | " + " | ".join(str(counts.get((t, v), 0) or "·") for v in predicted) + " |")
    p("")
    p("| class | precision | recall |")
    p("|---|---|---|")
    for label in [l for l in LABELS if l != "abstain"]:
        said = [r for r in runs if r[key] == label]
        actual = [r for r in runs if label in r["truth"] and not r["combo"]]
        if not said and not actual:
            continue
        prec = f"{sum(label in r['truth'] for r in said) / len(said):.0%}" if said else "–"
        rec = f"{sum(r[key] == label for r in actual) / len(actual):.0%}" if actual else "–"
        p(f"| {label} | {prec} | {rec} |")
    if key == "verdict":
        p("")
        p("| stated confidence | runs | observed accuracy |")
        p("|---|---|---|")
        bins = defaultdict(list)
        for r in runs:
            if r["verdict"] != "abstain":
                lo = min(int(r["conf"] * 10) / 10, 0.9)
                bins[lo].append(r["verdict"] in r["truth"])
        for lo in sorted(bins):
            v = bins[lo]
            p(f"| {lo:.0%}–{lo + 0.1:.0%} | {len(v)} | {sum(v) / len(v):.0%} |")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = load(sys.argv[1])
    failed = [r for r in runs if r["failed"]]
    if failed:
        print(f"{len(failed)} runs ended without a verdict line (counted as abstain): "
              + ", ".join(f"{r['scenario']}-s{r['sev']}" for r in failed))
    held = [r for r in runs if r["combo"] or r["sev"] == 2]
    tune = [r for r in runs if not r["combo"] and r["sev"] != 2]
    out = sys.stdout
    for name, key in [("strata analyze", "verdict"), ("baseline: argmax utilisation", "base_util"),
                      ("baseline: argmax service demand", "base_demand")]:
        figures(held, key, out, f"{name} — held out (severity 2 and the combinations)", True)
    figures(tune, "verdict", out, "strata analyze — tuning set (severities 1 and 3)", True)


if __name__ == "__main__":
    main()
