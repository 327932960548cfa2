"""`openrlhf-fair report`: accuracy and fairness of saved OpenRLHF reward models on labelled preference pairs.

For each model (a folder written by `openrlhf train_rm`) and a JSON-lines file of pairs with
prompt / chosen / rejected and a group column (default `category`), it writes to --out:

- report.json: every number below, per model, overall and per group, plus the settings;
- report.md:   the same as tables, with what each column means;
- reward_distributions.png, reward_vs_length.png, accuracy_vs_fairness.png;
- pair_rewards.jsonl: the reward each model gave each response (to recompute anything).

Rewards are the RAW value-head outputs (OpenRLHF's `normalize_reward` off). The mean/std that train_rm writes
into the model config would shift and rescale them; that leaves accuracy unchanged but changes sigmoid(margin),
so Jain and Gini are computed on the scale the training loss saw. The group gap is also given divided by the
model's reward std (scale-free, comparable across models).

Tokenisation is OpenRLHF's own `RewardDataset` (prompt + response + eos, right-truncated at --max-len, last token
forced to eos), so a model is scored on exactly what it was trained on. That includes the host quirk: a pair
whose prompt fills max_len is scored on identical chosen/rejected tokens (margin 0, counted wrong, as in
OpenRLHF's own accuracy); the report counts such pairs.

The metric functions here import torch only; openrlhf is imported inside the functions that load and run models.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openrlhf_fair.metrics import (
    best_minus_worst_gap,
    gini_coefficient,
    group_accuracy,
    group_means,
    jain_index,
    worst_group,
)

__all__ = [
    "ReportError",
    "ScoredPairs",
    "compute_metrics",
    "identical_after_truncation",
    "load_pair_rewards",
    "load_pairs",
    "load_reward_model",
    "main",
    "pareto_front",
    "pareto_table",
    "pearson",
    "score_pairs",
    "write_report",
]


class ReportError(RuntimeError):
    """A problem with the user's input (data file, model folder, options): printed without a traceback."""


# ----------------------------------------------------------------------------------------------- data
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_pairs(
    path,
    *,
    group_key: str = "category",
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    split: str | None = None,
    split_key: str = "split",
    max_pairs: int | None = None,
) -> list[dict]:
    """Rows of a .jsonl / .jsonl.gz / .json (list) file, checked for the needed columns, optionally one split.

    `prompt_key=None` means the responses carry the whole conversation (OpenRLHF's --data.prompt_key unset).
    """
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"data file not found: {path}")
    try:
        with _open_text(path) as f:
            if path.name.endswith((".json", ".json.gz")):
                rows = json.load(f)
            else:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read {path} as JSON lines: {e}") from e
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ReportError(f"{path}: expected a non-empty list of JSON objects (one preference pair each)")
    needed = [k for k in (prompt_key, chosen_key, rejected_key, group_key) if k]
    if split is not None:
        needed.append(split_key)
    for i, row in enumerate(rows):
        missing = [k for k in needed if k not in row]
        if missing:
            raise ReportError(
                f"{path}: row {i + 1} has no column(s) {missing} (columns present: {sorted(row)}); "
                f"needed: {needed} (see --group-key / --prompt-key / --chosen-key / --rejected-key / --split)"
            )
        bad = [k for k in needed if not isinstance(row[k], str)]
        if bad:
            raise ReportError(f"{path}: row {i + 1}: column(s) {bad} must be strings")
    if split is not None:
        rows = [r for r in rows if r[split_key] == split]
        if not rows:
            raise ReportError(f"{path}: no row has {split_key} == {split!r}")
    if max_pairs is not None:
        rows = rows[:max_pairs]
    return rows


# ----------------------------------------------------------------------------------------------- metrics
def pearson(x, y) -> float:
    """Pearson correlation of two equal-length vectors; NaN when either is constant or has < 2 items."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"pearson: lengths differ ({x.numel()} vs {y.numel()})")
    if x.numel() < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = float(torch.sqrt((dx * dx).sum() * (dy * dy).sum()))
    return math.nan if denom == 0.0 else float((dx * dy).sum()) / denom


def compute_metrics(chosen, rejected, groups: list[str], chosen_len=None, rejected_len=None) -> dict:
    """All report numbers for one model from its rewards (pure torch; hand-checkable).

    chosen / rejected: rewards per pair; groups: group name per pair; *_len: response lengths (characters).
    """
    c = torch.as_tensor(chosen, dtype=torch.float64).reshape(-1)
    r = torch.as_tensor(rejected, dtype=torch.float64).reshape(-1)
    if not (c.numel() == r.numel() == len(groups)):
        raise ValueError("chosen, rejected and groups must have one entry per pair")
    names = sorted(set(groups))
    gid = torch.tensor([names.index(g) for g in groups], dtype=torch.int64)
    k = len(names)
    margin = c - r
    rewards = torch.cat([c, r])
    gid2 = torch.cat([gid, gid])
    alloc = torch.sigmoid(margin)

    acc_g, n_g = group_accuracy(c, r, gid, k)
    mc_g, _ = group_means(c, gid, k)
    mr_g, _ = group_means(r, gid, k)
    mm_g, _ = group_means(margin, gid, k)
    mean_reward_g, n2_g = group_means(rewards, gid2, k)
    worst_idx, worst_acc = worst_group(acc_g, n_g)
    gap = best_minus_worst_gap(mean_reward_g, n2_g)
    margin_gap = best_minus_worst_gap(mm_g, n_g)
    reward_std = float(rewards.std(correction=0))

    lengths = None
    if chosen_len is not None and rejected_len is not None:
        lengths = torch.cat(
            [torch.as_tensor(chosen_len, dtype=torch.float64), torch.as_tensor(rejected_len, dtype=torch.float64)]
        )

    per_group = {}
    for i, name in enumerate(names):
        sel = gid2 == i
        per_group[name] = {
            "n_pairs": int(n_g[i]),
            "accuracy": float(acc_g[i]),
            "mean_chosen_reward": float(mc_g[i]),
            "mean_rejected_reward": float(mr_g[i]),
            "mean_margin": float(mm_g[i]),
            "mean_reward": float(mean_reward_g[i]),
            "length_corr": pearson(rewards[sel], lengths[sel]) if lengths is not None else None,
        }
    hi = max(names, key=lambda n: per_group[n]["mean_reward"])
    lo = min(names, key=lambda n: per_group[n]["mean_reward"])
    return {
        "n_pairs": int(c.numel()),
        "accuracy": float((c > r).to(torch.float64).mean()),
        "mean_chosen_reward": float(c.mean()),
        "mean_rejected_reward": float(r.mean()),
        "mean_margin": float(margin.mean()),
        "reward_std": reward_std,
        "worst_group": names[worst_idx],
        "worst_group_accuracy": worst_acc,
        "reward_gap": gap,
        "reward_gap_over_std": gap / reward_std if reward_std > 0 else math.nan,
        "margin_gap": margin_gap,
        "highest_reward_group": hi,
        "lowest_reward_group": lo,
        "jain_sigmoid_margin": jain_index(alloc),
        "gini_sigmoid_margin": gini_coefficient(alloc),
        "length_corr": pearson(rewards, lengths) if lengths is not None else None,
        "groups": per_group,
    }


# ----------------------------------------------------------------------------------------------- models
@dataclass
class ScoredPairs:
    """Rewards one model gave a list of pairs, in the order of the pairs."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    identical: torch.Tensor  # bool: chosen and rejected tokens identical after truncation
    info: dict = field(default_factory=dict)


def _check_reward_checkpoint(path: Path) -> str:
    """Fail clearly unless `path` holds an HF model with a trained value head; return the head's prefix."""
    if not path.is_dir():
        raise ReportError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ReportError(f"{path} is not a saved model (no config.json); pass a folder written by openrlhf train_rm")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise ReportError(f"{config_file} is not valid JSON: {e}") from e
    prefix = config.get("value_head_prefix", "score")
    weight_files = sorted(path.glob("*.safetensors"))
    if weight_files:
        from safetensors import safe_open

        keys = []
        try:
            for wf in weight_files:
                with safe_open(str(wf), framework="pt") as f:
                    keys.extend(f.keys())
        except Exception as e:  # a truncated / corrupt file: say which
            raise ReportError(f"cannot read weights {wf}: {e}") from e
        if not any(k == f"{prefix}.weight" or k.startswith(f"{prefix}.") for k in keys):
            raise ReportError(
                f"{path} has no reward head weights ('{prefix}.weight'): it looks like a base model, not a reward "
                "model saved by openrlhf train_rm (its head would be random)"
            )
    elif not list(path.glob("*.bin")):
        raise ReportError(f"{path} has no model weights (*.safetensors or *.bin)")
    return prefix


def load_reward_model(path, *, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa"):
    """(model, tokenizer) of a saved OpenRLHF reward model, loaded with OpenRLHF's own loader, in eval mode."""
    path = Path(path)
    _check_reward_checkpoint(path)
    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.utils import get_tokenizer

    try:
        model = get_llm_for_sequence_regression(
            str(path),
            "reward",
            normalize_reward=False,
            attn_implementation=attn_implementation,
            param_dtype="bf16",
        )
        tokenizer = get_tokenizer(str(path), model, "left", None)
    except Exception as e:
        raise ReportError(f"cannot load reward model from {path}: {type(e).__name__}: {e}") from e
    if tokenizer.eos_token is None:
        raise ReportError(f"{path}: the tokenizer has no eos token; OpenRLHF's RewardDataset needs one")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, tokenizer


def _reward_dataset(rows, tokenizer, max_len, prompt_key, chosen_key, rejected_key, input_template, chat):
    """OpenRLHF's RewardDataset over `rows` (one process: the data is small)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from openrlhf.datasets import RewardDataset

    data_args = SimpleNamespace(
        prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key, apply_chat_template=chat
    )
    strategy = SimpleNamespace(args=SimpleNamespace(data=data_args))
    keep = [k for k in (prompt_key, chosen_key, rejected_key) if k]
    dataset = Dataset.from_list([{k: row[k] for k in keep} for row in rows])
    return RewardDataset(dataset, tokenizer, max_len, strategy, input_template=input_template, num_processors=1)


def identical_after_truncation(
    rows,
    tokenizer,
    max_len: int,
    *,
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    input_template: str | None = None,
    apply_chat_template: bool = False,
) -> list[bool]:
    """Per pair: are chosen and rejected the same tokens once OpenRLHF's RewardDataset has truncated them?

    Such a pair has margin exactly 0 whatever the model: no training signal, and a sure miss for accuracy.
    """
    dataset = _reward_dataset(
        rows, tokenizer, max_len, prompt_key, chosen_key, rejected_key, input_template, apply_chat_template
    )
    if len(dataset) != len(rows):
        raise ReportError(f"RewardDataset kept {len(dataset)} of {len(rows)} pairs; cannot align them with rows")
    same = []
    for i in range(len(dataset)):
        item = dataset[i]
        same.append(bool(torch.equal(item[0], item[2])))
    return same


@torch.no_grad()
def score_pairs(
    model,
    tokenizer,
    rows,
    *,
    max_len: int = 512,
    batch_size: int = 16,
    prompt_key: str | None = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    input_template: str | None = None,
    apply_chat_template: bool = False,
    desc: str = "scoring",
) -> ScoredPairs:
    """Rewards of chosen and rejected responses, batched (pairs sorted by length to limit padding)."""
    from tqdm import tqdm

    dataset = _reward_dataset(
        rows, tokenizer, max_len, prompt_key, chosen_key, rejected_key, input_template, apply_chat_template
    )
    if len(dataset) != len(rows):
        raise ReportError(f"RewardDataset kept {len(dataset)} of {len(rows)} pairs; cannot align rewards with rows")
    device = next(model.parameters()).device
    items = [dataset[i] for i in range(len(dataset))]
    identical = torch.tensor([bool(torch.equal(it[0], it[2])) for it in items], dtype=torch.bool)
    order = sorted(range(len(items)), key=lambda i: max(items[i][0].shape[-1], items[i][2].shape[-1]))
    chosen = torch.empty(len(items), dtype=torch.float64)
    rejected = torch.empty(len(items), dtype=torch.float64)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", file=sys.stderr):
        idx = order[start : start + batch_size]
        c_ids, c_mask, r_ids, r_mask, _ = dataset.collate_fn([items[i] for i in idx])
        c = model(c_ids.to(device), attention_mask=c_mask.to(device))
        r = model(r_ids.to(device), attention_mask=r_mask.to(device))
        chosen[idx] = c.float().cpu().to(torch.float64)
        rejected[idx] = r.float().cpu().to(torch.float64)
    if not bool(torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        raise ReportError(f"{desc}: the model produced NaN/Inf rewards")
    return ScoredPairs(chosen=chosen, rejected=rejected, identical=identical)


# ----------------------------------------------------------------------------------------------- output
_SUMMARY_COLUMNS = [
    ("accuracy", "accuracy", "{:.3f}"),
    ("worst_group_accuracy", "worst-group acc", "{:.3f}"),
    ("reward_gap", "reward gap (raw)", "{:.3f}"),
    ("reward_gap_over_std", "gap / reward std", "{:.3f}"),
    ("margin_gap", "margin gap", "{:.3f}"),
    ("jain_sigmoid_margin", "Jain σ(m)", "{:.4f}"),
    ("gini_sigmoid_margin", "Gini σ(m)", "{:.4f}"),
    ("length_corr", "corr(reward, length)", "{:+.3f}"),
]

_MEANINGS = """\
- **accuracy**: share of pairs with reward(chosen) > reward(rejected) (ties count as wrong, as in OpenRLHF).
- **worst-group acc**: the lowest per-group accuracy (group named in brackets).
- **reward gap (raw)**: best-minus-worst group mean reward (chosen and rejected responses together), in the model's
  raw reward units; **gap / reward std** divides it by the standard deviation of all the model's rewards on this
  data, so models with different reward scales compare (0 = the groups get the same reward level).
- **margin gap**: best-minus-worst group mean margin reward(chosen) - reward(rejected): how unequally sure the
  model is across groups. Pairwise losses (Bradley-Terry, FR, FC) see only margins, never a group's reward level,
  so this is the group quantity they can move directly; the reward gap moves only through generalisation.
- **Jain σ(m)** / **Gini σ(m)**: equality of the per-pair allocations x = sigmoid(margin), the paper's resource
  (Jain 1 and Gini 0 = every pair gets the same margin).
- **corr(reward, length)**: Pearson correlation between a response's reward and its length in characters
  (length bias), over all chosen and rejected responses; per group in the second table.
"""


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def summary_table(results: list[dict]) -> str:
    """Markdown table, one row per model (also what the CLI prints)."""
    head = "| model | " + " | ".join(title for _, title, _ in _SUMMARY_COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(_SUMMARY_COLUMNS) + 1)]
    for res in results:
        m = res["metrics"]
        cells = []
        for key, _, spec in _SUMMARY_COLUMNS:
            cell = _fmt(m[key], spec)
            if key == "worst_group_accuracy":
                cell += f" ({m['worst_group']})"
            elif key == "reward_gap":
                cell += f" ({m['highest_reward_group']} > {m['lowest_reward_group']})"
            cells.append(cell)
        lines.append(f"| {res['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_table(results: list[dict]) -> str:
    cols = ["n_pairs", "accuracy", "mean_chosen_reward", "mean_rejected_reward", "mean_margin", "mean_reward", "length_corr"]
    titles = ["pairs", "accuracy", "mean chosen", "mean rejected", "mean margin", "mean reward", "corr(reward, length)"]
    lines = ["| model | group | " + " | ".join(titles) + " |", "|" + " --- |" * (len(cols) + 2)]
    for res in results:
        for name, g in res["metrics"]["groups"].items():
            cells = [str(g["n_pairs"])] + [
                _fmt(g[c], "{:+.3f}" if c in ("length_corr",) else "{:.3f}") for c in cols[1:]
            ]
            lines.append(f"| {res['label']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_front(results: list[dict]) -> list[bool]:
    """Per model: is it Pareto-optimal for (accuracy up, group gap / std down, Jain up)? Ties do not dominate."""
    keys = [(r["metrics"]["accuracy"], -r["metrics"]["reward_gap_over_std"], r["metrics"]["jain_sigmoid_margin"])
            for r in results]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [not any(dominates(o, k) for o in keys if o is not k) for k in keys]


def pareto_table(results: list[dict]) -> str:
    """Accuracy vs best-minus-worst group gap vs Jain, one row per model, with the Pareto-optimal ones marked."""
    front = pareto_front(results)
    lines = ["| model | accuracy | worst-group acc | gap / reward std | Jain σ(m) | Pareto-optimal |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r, best in zip(results, front):
        m = r["metrics"]
        lines.append(f"| {r['label']} | {m['accuracy']:.3f} | {m['worst_group_accuracy']:.3f} | "
                     f"{_fmt(m['reward_gap_over_std'], '{:.3f}')} | {m['jain_sigmoid_margin']:.4f} | "
                     f"{'yes' if best else ''} |")
    return "\n".join(lines)


def _plots(results: list[dict], out: Path, group_key: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({g for res in results for g in res["groups"]})
    colors = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(names)}
    n = len(results)
    files = []

    # 1. reward distributions per group, one panel per model, same axes
    all_r = torch.cat([torch.cat([res["chosen"], res["rejected"]]) for res in results])
    lo, hi = float(all_r.min()), float(all_r.max())
    pad = 0.05 * (hi - lo or 1.0)
    bins = torch.linspace(lo - pad, hi + pad, 41).tolist()
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), sharex=True, sharey=True, squeeze=False)
    for ax, res in zip(axes[0], results):
        groups = res["groups"]
        rewards = torch.cat([res["chosen"], res["rejected"]])
        gl = groups + groups
        for g in names:
            vals = [float(v) for v, gg in zip(rewards, gl) if gg == g]
            ax.hist(vals, bins=bins, alpha=0.55, color=colors[g], label=f"{g} (mean {sum(vals) / len(vals):.2f})")
            ax.axvline(sum(vals) / len(vals), color=colors[g], lw=1.5, ls="--")
        ax.set_title(res["label"], fontsize=10)
        ax.set_xlabel("reward (raw)")
        ax.legend(fontsize=7, title=group_key, title_fontsize=7)
    axes[0][0].set_ylabel("responses")
    fig.suptitle("Reward distribution per group (chosen + rejected responses)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "reward_distributions.png", dpi=110)
    plt.close(fig)
    files.append("reward_distributions.png")

    # 2. reward against response length
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), sharey=True, squeeze=False)
    for ax, res in zip(axes[0], results):
        rewards = torch.cat([res["chosen"], res["rejected"]]).tolist()
        lengths = res["chosen_len"] + res["rejected_len"]
        gl = res["groups"] + res["groups"]
        for g in names:
            pts = [(ln, rw) for ln, rw, gg in zip(lengths, rewards, gl) if gg == g]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=5, alpha=0.4, color=colors[g], label=g)
        ax.set_xscale("symlog")
        corr = res["metrics"]["length_corr"]
        ax.set_title(f"{res['label']}  (corr {_fmt(corr, '{:+.2f}')})", fontsize=10)
        ax.set_xlabel("response length (characters)")
        ax.legend(fontsize=7, markerscale=2)
    axes[0][0].set_ylabel("reward (raw)")
    fig.tight_layout()
    fig.savefig(out / "reward_vs_length.png", dpi=110)
    plt.close(fig)
    files.append("reward_vs_length.png")

    # 3. accuracy against fairness, one point per model
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), sharey=True)
    for res in results:
        m = res["metrics"]
        for ax, key in zip(axes, ("reward_gap_over_std", "jain_sigmoid_margin")):
            ax.scatter([m[key]], [m["accuracy"]], s=30)
            ax.annotate(res["label"], (m[key], m["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        ax.margins(x=0.25, y=0.25)
    axes[0].set_xlabel("group reward gap / reward std  (lower = fairer)")
    axes[1].set_xlabel("Jain index of sigmoid(margin)  (higher = more equal)")
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Accuracy against fairness", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_fairness.png", dpi=110)
    plt.close(fig)
    files.append("accuracy_vs_fairness.png")
    return files


def write_report(results: list[dict], out, *, data_desc: str, settings: dict, group_key: str = "category") -> dict:
    """Write report.json, report.md, pair_rewards.jsonl and the PNGs; return the JSON document.

    Each result: label, path, groups (per pair), chosen / rejected (tensors), chosen_len / rejected_len (lists),
    identical (bool tensor), metrics (from `compute_metrics`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(results, out, group_key)
    doc = {
        "data": data_desc,
        "settings": settings,
        "rewards": "raw value-head outputs (normalize_reward off)",
        "models": [
            {
                "label": res["label"],
                "path": str(res["path"]),
                "pairs_identical_after_truncation": int(res["identical"].sum()),
                **res["metrics"],
            }
            for res in results
        ],
        "plots": plots,
    }
    (out / "report.json").write_text(json.dumps(doc, indent=2, allow_nan=True))
    with open(out / "pair_rewards.jsonl", "w") as f:
        for res in results:
            for i, g in enumerate(res["groups"]):
                f.write(json.dumps({"model": res["label"], "pair": i, group_key: g,
                                    "chosen": float(res["chosen"][i]), "rejected": float(res["rejected"][i]),
                                    "chosen_len": res["chosen_len"][i], "rejected_len": res["rejected_len"][i],
                                    "identical_after_truncation": bool(res["identical"][i])}) + "\n")
    ident = ", ".join(f"{r['label']}: {int(r['identical'].sum())}" for r in results)
    md = [
        "# Reward fairness report",
        "",
        f"Data: {data_desc}. Group key: `{group_key}`.",
        f"Rewards: raw value-head outputs (OpenRLHF's normalize_reward off). Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        f"Pairs whose chosen and rejected tokens are identical after max_len truncation (scored, margin 0): {ident}.",
        "",
        "## Summary (one row per model)",
        "",
        summary_table(results),
        "",
        "## Per group",
        "",
        group_table(results),
        "",
    ] + (["## Pareto view (accuracy up, group gap down, Jain up)", "", pareto_table(results), ""]
         if len(results) >= 3 else []) + [
        "## What the columns mean",
        "",
        _MEANINGS,
        "## Plots",
        "",
    ] + [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return doc


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openrlhf-fair report",
        description="Accuracy and fairness of saved OpenRLHF reward models on labelled preference pairs.",
    )
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="reward model folder saved by `openrlhf train_rm` (repeat for several models)")
    p.add_argument("--rewards", action="append", default=[], metavar="FILE",
                   help="pair_rewards.jsonl of an earlier report: add its models without scoring again (repeatable)")
    p.add_argument("--label", action="append", default=None,
                   help="display name per --model, in the same order (default: folder name)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="preference pairs, .jsonl / .jsonl.gz / .json, with prompt/chosen/rejected and a group column")
    p.add_argument("--group-key", default="category", help="column naming each pair's group (default: category)")
    p.add_argument("--prompt-key", default="prompt", help="prompt column; '' if responses hold the whole dialogue")
    p.add_argument("--chosen-key", default="chosen")
    p.add_argument("--rejected-key", default="rejected")
    p.add_argument("--split", default=None, help="keep only rows whose `split` column has this value (e.g. test)")
    p.add_argument("--max-pairs", type=int, default=None, help="score only the first N pairs (after --split)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for report.md/json and PNGs")
    p.add_argument("--max-len", type=int, default=512,
                   help="token limit, as train_rm's --data.max_len (use the value the models were trained with)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward batch")
    p.add_argument("--input-template", default=None, help="as train_rm's --data.input_template")
    p.add_argument("--apply-chat-template", action="store_true", help="as train_rm's --data.apply_chat_template")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype (float32 default: bf16 rewards round to ~3 digits and create ties)")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa (default) or eager, flash_attention_2 on GPU")
    return p


def _ensure_host_importable() -> None:
    """openrlhf.models imports flash_attn at module top; where it is not installed (CPU machines, or a GPU
    machine without it: the report uses sdpa attention) serve the CPU backend's import-only stand-in."""
    from openrlhf_fair.cpu_backend.stand_ins import install

    install("flash_attn")  # a no-op when the real package is importable


def load_pair_rewards(path, group_key: str = "category") -> list[dict]:
    """Models and rewards from a report's pair_rewards.jsonl, as results ready for `write_report`."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"rewards file not found: {path}")
    by_model: dict[str, list[dict]] = {}
    try:
        for line in open(path, encoding="utf-8"):
            if line.strip():
                row = json.loads(line)
                by_model.setdefault(row["model"], []).append(row)
    except (ValueError, KeyError) as e:
        raise ReportError(f"{path} is not a pair_rewards.jsonl written by openrlhf-fair report: {e}") from e
    results = []
    for label, rows in by_model.items():
        rows.sort(key=lambda r: r["pair"])
        missing = [k for k in (group_key, "chosen", "rejected", "chosen_len", "rejected_len") if k not in rows[0]]
        if missing:
            raise ReportError(f"{path}: rows have no {missing} (see --group-key)")
        groups = [r[group_key] for r in rows]
        chosen = torch.tensor([r["chosen"] for r in rows], dtype=torch.float64)
        rejected = torch.tensor([r["rejected"] for r in rows], dtype=torch.float64)
        clen, rlen = [r["chosen_len"] for r in rows], [r["rejected_len"] for r in rows]
        results.append({
            "label": label, "path": str(path), "groups": groups, "chosen": chosen, "rejected": rejected,
            "chosen_len": clen, "rejected_len": rlen,
            "identical": torch.tensor([bool(r.get("identical_after_truncation", False)) for r in rows]),
            "metrics": compute_metrics(chosen, rejected, groups, clen, rlen),
        })
    return results


def run_report(args) -> dict:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.model and not args.rewards:
        raise ReportError("nothing to report: give --model PATH (with --data FILE) or --rewards FILE")
    if args.model and not args.data:
        raise ReportError("--model needs --data FILE (the labelled preference pairs to score)")
    earlier = [res for f in args.rewards for res in load_pair_rewards(f, args.group_key)]
    labels = args.label or [Path(m).name or str(m) for m in args.model]
    if len(labels) != len(args.model):
        raise ReportError(f"{len(labels)} --label for {len(args.model)} --model: give one label per model or none")
    if len(set(labels)) != len(labels):
        labels = [f"{lab}#{i + 1}" for i, lab in enumerate(labels)]
    prompt_key = args.prompt_key or None
    if not args.model:
        results = earlier
        if len({r["label"] for r in results}) != len(results):
            raise ReportError("two --rewards files hold models with the same label")
        data_desc = "rewards from " + ", ".join(args.rewards) + f", {results[0]['metrics']['n_pairs']} pairs"
        doc = write_report(results, args.out, data_desc=data_desc, settings={"source": "pair_rewards"},
                           group_key=args.group_key)
        doc["_results"] = results
        return doc
    rows = load_pairs(args.data, group_key=args.group_key, prompt_key=prompt_key, chosen_key=args.chosen_key,
                      rejected_key=args.rejected_key, split=args.split, max_pairs=args.max_pairs)
    for path in args.model:  # fail before spending time on the first model
        _check_reward_checkpoint(Path(path))
    _ensure_host_importable()
    groups = [r[args.group_key] for r in rows]
    chosen_len = [len(r[args.chosen_key]) for r in rows]
    rejected_len = [len(r[args.rejected_key]) for r in rows]
    results = list(earlier)
    for label, path in zip(labels, args.model):
        model, tokenizer = load_reward_model(path, device=device, dtype=args.dtype,
                                             attn_implementation=args.attn_implementation)
        scored = score_pairs(model, tokenizer, rows, max_len=args.max_len, batch_size=args.batch_size,
                             prompt_key=prompt_key, chosen_key=args.chosen_key, rejected_key=args.rejected_key,
                             input_template=args.input_template, apply_chat_template=args.apply_chat_template,
                             desc=f"report {label}")
        del model
        results.append({
            "label": label, "path": path, "groups": groups, "chosen": scored.chosen, "rejected": scored.rejected,
            "chosen_len": chosen_len, "rejected_len": rejected_len, "identical": scored.identical,
            "metrics": compute_metrics(scored.chosen, scored.rejected, groups, chosen_len, rejected_len),
        })
    counts = {g: groups.count(g) for g in sorted(set(groups))}
    data_desc = (f"{args.data}" + (f" (split {args.split})" if args.split else "") + f", {len(rows)} pairs: "
                 + ", ".join(f"{g} {n}" for g, n in counts.items()))
    settings = {"max_len": args.max_len, "device": device, "dtype": args.dtype, "batch_size": args.batch_size}
    doc = write_report(results, args.out, data_desc=data_desc, settings=settings, group_key=args.group_key)
    doc["_results"] = results
    return doc


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        doc = run_report(args)
    except ReportError as e:
        print(f"openrlhf-fair report: error: {e}", file=sys.stderr)
        return 2
    print(summary_table(doc["_results"]))
    print(f"\nreport written to {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
