"""`openrlhf-fair debias`: remove bias directions from a saved reward model's value head, without retraining.

Steps: check every input; load the model as `report` does; run it once over the pairs, keeping each response's
last-token hidden state; estimate the directions on the fit part of the pairs; project them out of the head
(`core.debias.project_head`) and rescale it so the rewards' std on the fit part is kept; print accuracy, length
correlation, group gap and reward std before and after on the held-out part; write the new checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from openrlhf_fair.core import debias as projection
from openrlhf_fair.debias import checkpoint
from openrlhf_fair.errors import DebiasError

__all__ = ["Removal", "build_parser", "figures", "main", "parse_removals", "run_debias"]

DEFAULT_MAX_LEN = 512


@dataclass(frozen=True)
class Removal:
    """One --remove: kind "length" or "group" (with the group column)."""

    kind: str
    key: str | None = None

    @property
    def label(self) -> str:
        return self.kind if self.key is None else f"{self.kind}:{self.key}"


def parse_removals(values: list[str]) -> list[Removal]:
    """--remove values -> Removals, refusing unknown kinds, repeats and more than one group column."""
    if not values:
        raise DebiasError("nothing to remove: give --remove length and/or --remove group:KEY")
    removals = []
    for value in values:
        kind, _, key = value.partition(":")
        if kind == "length" and not key:
            removal = Removal("length")
        elif kind == "group" and key:
            removal = Removal("group", key)
        else:
            raise DebiasError(f"unknown --remove {value!r}: use 'length' or 'group:KEY' (KEY: the data's group "
                              "column, e.g. group:category)")
        if removal in removals:
            raise DebiasError(f"--remove {value} is given twice")
        removals.append(removal)
    if sum(r.kind == "group" for r in removals) > 1:
        raise DebiasError("only one --remove group:KEY per run: debias again for another group column")
    return removals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openrlhf-fair debias",
        description="Remove bias directions (length, a group) from a saved OpenRLHF reward model's value head, "
                    "without retraining: the head w becomes w - s (w.d/|d|^2) d for each direction d estimated "
                    "from your pairs (Fein, Lamparth et al., ICML 2026), rescaled so the rewards keep their spread. "
                    "The result is an ordinary OpenRLHF reward model (only the head changes).",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="reward model folder saved by `openrlhf train_rm`")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="preference pairs (.jsonl / .jsonl.gz / .json) with prompt/chosen/rejected and, for the "
                        "group gap, a group column: the directions are estimated from them")
    p.add_argument("--remove", action="append", default=[], metavar="KIND",
                   help="'length' (mean hidden state of the longer minus the shorter response of each pair) or "
                        "'group:KEY' (difference of the group means of column KEY); repeat to remove both "
                        "(orthogonalised in the order given)")
    p.add_argument("--strength", type=_strengths, default=[1.0], metavar="S[,S...]",
                   help="share of each direction removed, 0 to 1 (default 1: all). Removing all of the length "
                        "direction can overcorrect where length carries real signal: give several values (e.g. "
                        "0.25,0.5,1) to write one checkpoint per value, OUT/strength_S, and compare them on the "
                        "held-out pairs at the cost of one pass over the data")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the new checkpoint (new or empty)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of the pairs held out from estimating and shown before/after (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    p.add_argument("--group-key", default="category",
                   help="group column for the printed group gap when no --remove group:KEY names one "
                        "(default: category)")
    p.add_argument("--prompt-key", default="prompt", help="prompt column; '' if responses hold the whole dialogue")
    p.add_argument("--chosen-key", default="chosen")
    p.add_argument("--rejected-key", default="rejected")
    p.add_argument("--split", default=None, help="keep only rows whose `split` column has this value (e.g. train)")
    p.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs (after --split)")
    p.add_argument("--max-len", type=int, default=None,
                   help=f"token limit, as train_rm's --data.max_len (default: the value saved with the model, "
                        f"else {DEFAULT_MAX_LEN})")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward batch")
    p.add_argument("--input-template", default=None, help="as train_rm's --data.input_template")
    p.add_argument("--apply-chat-template", action="store_true", help="as train_rm's --data.apply_chat_template")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa (default) or eager, flash_attention_2 on GPU")
    return p


def _strengths(text: str) -> list[float]:
    """--strength S[,S...] -> floats (their range is checked with the other options)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or comma-separated numbers: {text!r}") from None


def _check_options(args) -> list[Removal]:
    removals = parse_removals(args.remove)
    for strength in args.strength:
        if not 0.0 <= strength <= 1.0:  # also refuses NaN
            raise DebiasError(f"--strength must be between 0 and 1 (1 removes the whole direction), got {strength}")
    if len(set(args.strength)) != len(args.strength):
        raise DebiasError(f"--strength {','.join(map(str, args.strength))} repeats a value")
    if not 0.0 <= args.holdout < 1.0:
        raise DebiasError(f"--holdout must be at least 0 and below 1, got {args.holdout}")
    for flag, value in (("--batch-size", args.batch_size), ("--max-len", args.max_len),
                        ("--max-pairs", args.max_pairs)):
        if value is not None and value < 1:
            raise DebiasError(f"{flag} must be >= 1, got {value}")
    model, out = Path(args.model), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DebiasError(f"--out {out} exists and is not an empty folder: choose a new folder")
    if out.resolve() == model.resolve():
        raise DebiasError("--out must differ from --model: the original checkpoint is kept")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise DebiasError(f"--out {out}: cannot write there ({parent} is not writable)")
    return removals


def _check_group_column(path, key: str) -> None:
    """A clear refusal when the group column of --remove group:KEY is not in the data."""
    from openrlhf_fair.errors import DataError
    from openrlhf_fair.checks.data import iter_rows

    if not Path(path).is_file():
        return  # load_pairs says so
    try:
        for row_no, row in iter_rows(path):
            if key not in row:
                raise DebiasError(f"--remove group:{key}: {path} has no column {key!r} (row {row_no} has "
                                  f"{sorted(row)}); name the column that holds each pair's group")
            return
    except DataError as e:
        raise DebiasError(str(e)) from None


def figures(chosen, rejected, chosen_len, rejected_len, group_ids, group_names) -> dict[str, float]:
    """The before/after numbers: accuracy, Spearman and Pearson correlation of reward with length (characters),
    group gap / reward std and reward std, as `report` defines them (report.metrics.pair_metrics)."""
    from openrlhf_fair.report.metrics import pair_metrics

    m = pair_metrics(chosen, rejected, group_ids, group_names, chosen_len, rejected_len)
    rewards = torch.cat([torch.as_tensor(chosen), torch.as_tensor(rejected)])
    lengths = torch.cat([torch.as_tensor(chosen_len), torch.as_tensor(rejected_len)])
    return {"accuracy": float(m["fairness/acc"][0]),
            "spearman_reward_length": projection.spearman(rewards, lengths),
            "pearson_reward_length": float(m["fairness/length_corr"][0]),
            "gap_over_std": float(m["fairness/reward_gap_over_std"][0]),
            "reward_std": float(m["fairness/reward_std"][0])}


FIGURE_NAMES = {"accuracy": "accuracy", "spearman_reward_length": "Spearman(reward, length)",
                "pearson_reward_length": "Pearson(reward, length)", "gap_over_std": "group gap / reward std",
                "reward_std": "reward std"}


def _split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, held-out) pair indices: a seeded random share `holdout` held out (at least 1 pair when > 0)."""
    if holdout == 0:
        return list(range(n)), []
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(n - 1, max(1, round(holdout * n)))
    return sorted(perm[k:]), sorted(perm[:k])


def _rounded(values) -> list[float]:
    return [float(f"{float(v):.8g}") for v in values]


def out_folders(out, strengths: list[float]) -> list[Path]:
    """Where each strength's checkpoint goes: --out itself for one strength, else --out/strength_S."""
    out = Path(out)
    return [out] if len(strengths) == 1 else [out / f"strength_{s:g}" for s in strengths]


def run_debias(args) -> list[dict]:
    """Everything `debias` does; returns, per --strength, the record written into its checkpoint's config.json."""
    from openrlhf_fair.report import data, scoring
    from openrlhf_fair.report.data import PairSet
    from openrlhf_fair.errors import ReportError

    removals = _check_options(args)
    group = next((r.key for r in removals if r.kind == "group"), None)
    group_key = group or args.group_key
    model_path, out = Path(args.model), Path(args.out)
    try:
        prefix = scoring.check_reward_checkpoint(model_path)
        head = checkpoint.read_head(model_path, prefix)
        if group:
            _check_group_column(args.data, group)
        rows = data.load_pairs(args.data, group_key=group_key, prompt_key=args.prompt_key or None,
                               chosen_key=args.chosen_key, rejected_key=args.rejected_key, split=args.split,
                               max_pairs=args.max_pairs)
    except ReportError as e:
        raise DebiasError(str(e)) from None
    pairs = PairSet.from_rows(rows, group_key, args.chosen_key, args.rejected_key)
    fit, held = _split(len(rows), args.holdout, args.seed)
    max_len = args.max_len or scoring.trained_max_len(model_path) or DEFAULT_MAX_LEN
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    try:
        model, tokenizer = scoring.load_reward_model(model_path, device=device, dtype="float32",
                                                     attn_implementation=args.attn_implementation)
    except ReportError as e:
        raise DebiasError(str(e)) from None
    loaded = getattr(model, model.value_head_prefix)
    if not isinstance(loaded, torch.nn.Linear) or loaded.out_features != 1 or loaded.bias is not None:
        raise DebiasError(f"{model_path}: the loaded value head is {loaded!r}, not a linear map to one reward")
    tokenized = scoring.tokenize_pairs(rows, tokenizer, max_len, prompt_key=args.prompt_key or None,
                                       chosen_key=args.chosen_key, rejected_key=args.rejected_key,
                                       input_template=args.input_template,
                                       apply_chat_template=args.apply_chat_template)
    states = checkpoint.hidden_states(model, tokenized, batch_size=args.batch_size, desc="debias: hidden states")
    w_loaded = loaded.weight.detach().to(torch.float64).cpu()
    del model
    checkpoint.check_linear(states, w_loaded, model_path)

    # Directions from the fit pairs (pairs identical after truncation carry no response: left out).
    usable = [i for i in fit if not bool(states.identical[i])]
    hc, hr = states.chosen[usable].double(), states.rejected[usable].double()
    directions, names, removed = [], [], []
    for r in removals:
        if r.kind == "length":
            d, used = projection.length_direction(hc, hr, [pairs.chosen_len[i] for i in usable],
                                                  [pairs.rejected_len[i] for i in usable])
            directions.append(d)
            names.append("length")
            removed.append({"kind": "length", "name": "length", "pairs": used,
                            "estimate": "mean of h(longer response) - h(shorter response) over pairs of unequal "
                                        "length (characters)"})
        else:
            gid = pairs.group_ids[usable]
            ds, ns, counts = projection.group_directions(torch.cat([hc, hr]), torch.cat([gid, gid]),
                                                         pairs.group_names)
            directions += ds
            names += [f"group:{r.key}:{n}" for n in ns]
            removed += [{"kind": "group", "key": r.key, "name": n, "pairs_per_group": {g: c // 2 for g, c in
                                                                                         counts.items()},
                         "estimate": "mean h of the group's responses minus mean h of the first group's"}
                        for n in ns]
    for entry, d in zip(removed, directions):
        entry["norm"] = float(torch.linalg.vector_norm(d))
    basis = projection.orthonormal_basis(directions, names)
    h_fit = torch.cat([hc, hr])
    w_old = w_loaded.reshape(-1)

    def rewards(w, idx):
        return (states.chosen[idx].double() @ w, states.rejected[idx].double() @ w)

    shown = held or fit
    args_fig = ([pairs.chosen_len[i] for i in shown], [pairs.rejected_len[i] for i in shown],
                pairs.group_ids[shown], pairs.group_names)
    before = figures(*rewards(w_old, shown), *args_fig)
    config = json.loads((model_path / "config.json").read_text())
    records = []
    for strength, folder in zip(args.strength, out_folders(out, args.strength)):
        projected, coefficients = projection.project_head(head.weight, basis, strength)
        scale = projection.rescale_to_std(h_fit, head.weight, projected)
        new_weight = projected * scale
        # The rewards the saved head will give: its weight as stored, then as OpenRLHF's loader reads it.
        w_new = new_weight.to(head.dtype).to(checkpoint.LOADED_DTYPE).to(torch.float64).reshape(-1)
        mean_std = None
        if "mean" in config and "std" in config:  # train_rm's eval statistics, used by --reward.normalize_enable
            old_fit = torch.cat(rewards(w_old, fit))
            new_fit = torch.cat(rewards(w_new, fit))
            mean_std = (float(config["mean"]) + float(new_fit.mean() - old_fit.mean()),
                        float(config["std"]) * float(new_fit.std() / old_fit.std()))
        record = {
            "what": "value head w replaced by scale * (w - strength * sum_i coefficients[i] * basis[i]); undo: "
                    "w = head / scale + strength * sum_i coefficients[i] * basis[i]",
            "removed": removed,
            "strength": strength,
            "scale": scale,
            "basis": [_rounded(q) for q in basis],
            "coefficients": _rounded(coefficients),
            "source_model": str(model_path.resolve()),
            "data": str(Path(args.data).resolve()),
            "split": args.split,
            "group_key": group_key,
            "pairs": {"total": len(rows), "fit": len(fit), "fit_used": len(usable), "held_out": len(held)},
            "held_out_pairs": held,  # row numbers (after --split / --max-pairs) of the pairs the figures are on
            "holdout": args.holdout,
            "seed": args.seed,
            "max_len": max_len,
            "figures_on": "held-out pairs" if held else "fit pairs (--holdout 0)",
            "before": before,
            "after": figures(*rewards(w_new, shown), *args_fig),
        }
        if mean_std is not None:
            record["reward_mean_std_before"] = [config["mean"], config["std"]]
        checkpoint.write_checkpoint(model_path, folder, head, new_weight, record, mean_std)
        records.append(record)
    return records


def print_summary(records: list[dict], out) -> None:
    first, pairs = records[0], records[0]["pairs"]
    what = []
    for r in first["removed"]:
        if r["kind"] == "length":
            what.append(f"length ({r['pairs']} pairs of unequal length)")
        else:
            counts = ", ".join(f"{g} {n}" for g, n in r["pairs_per_group"].items())
            what.append(f"group {r['key']} {r['name']} ({counts} pairs)")
    print("removed: " + "; ".join(what))
    print(f"estimated on {pairs['fit_used']} of {pairs['total']} pairs; the head is rescaled (x"
          + ", x".join(f"{r['scale']:.4g}" for r in records) + ") to keep the reward std on them")
    print(f"\n{first['figures_on']} ({pairs['held_out'] or pairs['fit']} pairs):\n")
    columns = ["before"] + [f"strength {r['strength']:g}" for r in records]
    print(f"| {'':<26} | " + " | ".join(f"{c:>12}" for c in columns) + " |")
    print(f"| {'-' * 26} | " + " | ".join("-" * 12 for _ in columns) + " |")
    for key, name in FIGURE_NAMES.items():
        fmt = "+12.3f" if "length" in key else "12.3f" if key != "reward_std" else "#12.4g"
        values = [first["before"][key]] + [r["after"][key] for r in records]
        print(f"| {name:<26} | " + " | ".join(f"{v:{fmt}}" for v in values) + " |")
    folders = out_folders(out, [r["strength"] for r in records])
    print("\nnew reward model(s) written to " + ", ".join(map(str, folders))
          + f" (config.json holds the record under '{checkpoint.RECORD_KEY}')")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records = run_debias(args)
    except DebiasError as e:
        print(f"openrlhf-fair debias: error: {e}", file=sys.stderr)
        return 2
    print_summary(records, args.out)
    return 0
