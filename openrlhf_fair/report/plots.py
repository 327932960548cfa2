"""The report's PNGs: reward distributions per group, reward against length, accuracy against fairness (with
95% intervals). A method with several runs is drawn from its first run in the first two plots."""

from __future__ import annotations

from pathlib import Path

import torch

from openrlhf_fair.report.analysis import MethodResult
from openrlhf_fair.report.data import PairSet
from openrlhf_fair.report.rendering import fmt

__all__ = ["write_plots"]


def write_plots(results: list[MethodResult], pairs: PairSet, out: Path, group_key: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = pairs.group_names
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(names)}
    n = len(results)
    gl = pairs.groups + pairs.groups
    lengths = pairs.chosen_len + pairs.rejected_len
    rewards_of = {res.label: torch.cat([res.runs[0].chosen, res.runs[0].rejected]) for res in results}

    # 1. reward distributions per group, one panel per model, same axes
    all_r = torch.cat(list(rewards_of.values()))
    lo, hi = float(all_r.min()), float(all_r.max())
    pad = 0.05 * (hi - lo or 1.0)
    bins = torch.linspace(lo - pad, hi + pad, 41).tolist()
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), sharex=True, sharey=True, squeeze=False)
    for ax, res in zip(axes[0], results):
        rewards = rewards_of[res.label]
        for g in names:
            vals = [float(v) for v, gg in zip(rewards, gl) if gg == g]
            ax.hist(vals, bins=bins, alpha=0.55, color=colors[g], label=f"{g} (mean {sum(vals) / len(vals):.2f})")
            ax.axvline(sum(vals) / len(vals), color=colors[g], lw=1.5, ls="--")
        ax.set_title(res.label, fontsize=10)
        ax.set_xlabel("reward (raw)")
        ax.legend(fontsize=7, title=group_key, title_fontsize=7)
    axes[0][0].set_ylabel("responses")
    fig.suptitle("Reward distribution per group (chosen + rejected responses)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "reward_distributions.png", dpi=110)
    plt.close(fig)

    # 2. reward against response length
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), sharey=True, squeeze=False)
    for ax, res in zip(axes[0], results):
        rewards = rewards_of[res.label].tolist()
        for g in names:
            pts = [(ln, rw) for ln, rw, gg in zip(lengths, rewards, gl) if gg == g]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=5, alpha=0.4, color=colors[g], label=g)
        ax.set_xscale("symlog")
        ax.set_title(f"{res.label}  (corr {fmt(res.per_run[0]['fairness/length_corr'], '{:+.2f}')})", fontsize=10)
        ax.set_xlabel("response length (characters)")
        ax.legend(fontsize=7, markerscale=2)
    axes[0][0].set_ylabel("reward (raw)")
    fig.tight_layout()
    fig.savefig(out / "reward_vs_length.png", dpi=110)
    plt.close(fig)

    # 3. accuracy against fairness, one point per model with its 95% intervals
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4), sharey=True)
    keys = ("fairness/reward_gap_over_std", "fairness/length_corr", "fairness/jain")
    for res in results:
        acc = res.metrics["fairness/acc"]
        for ax, key in zip(axes, keys):
            e = res.metrics[key]
            ax.errorbar([e.value], [acc.value], xerr=[[e.value - e.lo], [e.hi - e.value]],
                        yerr=[[acc.value - acc.lo], [acc.hi - acc.value]], fmt="o", ms=4, capsize=2)
            ax.annotate(res.label, (e.value, acc.value), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        ax.margins(x=0.25, y=0.25)
    axes[0].set_xlabel("group reward gap / reward std  (lower = fairer)")
    axes[1].set_xlabel("corr(reward, length)  (lower = less length bias)")
    axes[2].set_xlabel("Jain index of sigmoid(margin)  (higher = more equal)")
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Accuracy against fairness (95% intervals over pairs and seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_fairness.png", dpi=110)
    plt.close(fig)
    return ["reward_distributions.png", "reward_vs_length.png", "accuracy_vs_fairness.png"]
