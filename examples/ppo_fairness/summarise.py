"""Tables of the PPO fairness experiment: per-group reward, gap, judge, KL and length, with t intervals over seeds.

The under-rewarded group is the one the optimised reward model scores lower on the base policy's responses
(mean over the evaluation seeds); gap = favoured-group mean reward - under-rewarded-group mean reward (signed,
so a gap that flips shows as negative). Differences against plain PPO are paired by seed (same seed: same
prompt order, same initial sampling).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# Two-sided 95% quantiles of Student's t by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": len(values)}
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(values)}


def fmt(stat: dict, spec: str = "+.3f") -> str:
    if math.isnan(stat["lo"]):
        return format(stat["mean"], spec)
    return f"{stat['mean']:{spec}} [{stat['lo']:{spec}}, {stat['hi']:{spec}}]"


def metrics(result: dict, under: str, favoured: str) -> dict:
    g = result["groups"]
    total = sum(v["n"] for v in g.values())
    return {
        "reward_under": g[under]["reward"], "reward_favoured": g[favoured]["reward"],
        "reward_all": sum(v["reward"] * v["n"] for v in g.values()) / total,
        "gap": g[favoured]["reward"] - g[under]["reward"],
        "judge_under": g[under]["judge"], "judge_favoured": g[favoured]["judge"],
        "judge_gap": g[favoured]["judge"] - g[under]["judge"],
        "kl_under": g[under]["kl"], "kl_favoured": g[favoured]["kl"],
        "length_under": g[under]["length"], "length_favoured": g[favoured]["length"],
    }


COLUMNS = [("reward_all", "reward, all"), ("reward_under", "reward, {under}"), ("reward_favoured", "reward, {favoured}"),
           ("gap", "gap"), ("judge_under", "judge, {under}"), ("judge_gap", "judge gap"),
           ("kl_under", "KL, {under}"), ("kl_favoured", "KL, {favoured}"),
           ("length_under", "length, {under}"), ("length_favoured", "length, {favoured}")]


def table(rows: list[tuple[str, dict]], under: str, favoured: str) -> str:
    head = [name.format(under=under, favoured=favoured) for _, name in COLUMNS]
    lines = ["| policy | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, stats in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(stats[key], "+.3f" if not key.startswith("length") else ".1f")
                                                  for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def summarise(out: Path) -> dict:
    evals = {p.stem: json.loads(p.read_text()) for p in sorted((out / "eval").glob("*.json"))}
    base = {int(k.split("-s")[1]): v for k, v in evals.items() if k.startswith("base-")}
    groups = sorted(next(iter(base.values()))["groups"])
    base_reward = {g: statistics.fmean(b["groups"][g]["reward"] for b in base.values()) for g in groups}
    under, favoured = min(groups, key=base_reward.get), max(groups, key=base_reward.get)
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for key, result in evals.items():
        if key.startswith("base-"):
            continue
        estimator, method, seed = key.rsplit("-", 2)
        runs.setdefault((estimator, method), {})[int(seed[1:])] = metrics(result, under, favoured)
    base_metrics = {seed: metrics(b, under, favoured) for seed, b in base.items()}
    doc = {"under_rewarded": under, "favoured": favoured, "base": {}, "runs": {}, "vs_plain": {}}
    keys = [k for k, _ in COLUMNS]
    doc["base"] = {k: interval([m[k] for m in base_metrics.values()]) for k in keys}
    md = [f"Under-rewarded group (lower reward on the base policy): **{under}**; favoured: **{favoured}**. "
          "Mean over seeds [95% t interval]; rewards are standardised RM rewards; KL = sum over response tokens "
          "of log pi - log pi_ref on the policy's samples; length in tokens.\n"]
    methods = ["plain"] + sorted({m for _, m in runs} - {"plain"})  # the tables' rows: plain, then the others
    for estimator in sorted({e for e, _ in runs}):
        rows = [("base policy (before)", doc["base"])]
        for method in methods:
            per_seed = runs.get((estimator, method))
            if not per_seed:
                continue
            stats = {k: interval([m[k] for m in per_seed.values()]) for k in keys}
            doc["runs"][f"{estimator}/{method}"] = {"seeds": sorted(per_seed), **stats}
            rows.append((f"{method} ({len(per_seed)} seeds)", stats))
            plain = runs.get((estimator, "plain"), {})
            paired = sorted(set(per_seed) & set(plain))
            if method != "plain" and len(paired) >= 1:
                doc["vs_plain"][f"{estimator}/{method}"] = {
                    k: interval([per_seed[s][k] - plain[s][k] for s in paired]) for k in keys} | {"seeds": paired}
        md.append(f"\n### {estimator}\n\n" + table(rows, under, favoured))
        diffs = [(f"{m} - plain", doc["vs_plain"][f"{estimator}/{m}"]) for m in methods[1:]
                 if f"{estimator}/{m}" in doc["vs_plain"]]
        if diffs:
            md.append(f"\nPaired by seed, fairness run minus plain run ({estimator}):\n\n" + table(diffs, under, favoured))
    (out / "summary.json").write_text(json.dumps(doc, indent=1))
    (out / "summary.md").write_text("".join(md))
    print("".join(md))
    return doc
