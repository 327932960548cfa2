"""`openrlhf-fair report`: the command line; checks every input before the first model is scored."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from openrlhf_fair.report import analysis, audit, bestofn, data, rendering, scoring, stereotype
from openrlhf_fair.report.data import PairSet, ScoredRun
from openrlhf_fair.errors import ReportError

__all__ = ["Report", "build_parser", "main", "run_report"]

DEFAULT_MAX_LEN = 512


@dataclass
class Report:
    """What one `report` run computed and wrote."""

    pairs: PairSet
    methods: list[analysis.MethodResult]
    baseline: str
    out: Path
    warnings: list[str] = field(default_factory=list)
    best_of_n: bestofn.BestOfNResult | None = None
    stereotype: stereotype.StereotypeResult | None = None
    audit: audit.AuditResult | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openrlhf-fair report",
        description="Accuracy and fairness of saved OpenRLHF reward models on labelled preference pairs, with 95% "
                    "intervals over pairs and training seeds, and an optional best-of-N selection audit.",
    )
    p.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="reward model folder saved by `openrlhf train_rm` (repeat for several models)")
    p.add_argument("--rewards", action="append", default=[], metavar="FILE",
                   help="pair_rewards.jsonl of an earlier report: add its models without scoring again (repeatable)")
    p.add_argument("--label", action="append", default=None,
                   help="display name per --model, in the same order (default: folder name); models given the same "
                        "label are runs (training seeds) of one method: mean and intervals over them")
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="label of the model every other is compared with (default: the first)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="preference pairs, .jsonl / .jsonl.gz / .json, with prompt/chosen/rejected and a group column")
    p.add_argument("--group-key", default="category", help="column naming each pair's group (default: category)")
    p.add_argument("--prompt-key", default="prompt", help="prompt column; '' if responses hold the whole dialogue")
    p.add_argument("--chosen-key", default="chosen")
    p.add_argument("--rejected-key", default="rejected")
    p.add_argument("--split", default=None, help="keep only rows whose `split` column has this value (e.g. test)")
    p.add_argument("--max-pairs", type=int, default=None, help="score only the first N pairs (after --split)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for report.md/json and PNGs")
    p.add_argument("--max-len", type=int, default=None,
                   help="token limit, as train_rm's --data.max_len (default: the value saved with the models, "
                        f"else {DEFAULT_MAX_LEN}; a value that differs from the saved one is warned about)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per forward batch")
    p.add_argument("--input-template", default=None, help="as train_rm's --data.input_template")
    p.add_argument("--apply-chat-template", action="store_true", help="as train_rm's --data.apply_chat_template")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype (float32 default: bf16 rewards round to ~3 digits and create ties)")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa (default) or eager, flash_attention_2 on GPU")
    bestofn.add_arguments(p)
    g = p.add_argument_group("stereotype probes and the audit's verdicts (the verdicts need two or more models)")
    g.add_argument("--stereotype-probes", default=None, metavar="SOURCE",
                   help="'crows-pairs' (bundled CrowS-Pairs, 1,508 pairs, CC BY-SA 4.0) or a .jsonl file with "
                        "sent_more / sent_less / bias_type: report the share of pairs where the more stereotypical "
                        "sentence gets the higher reward (0.5 = neutral), per bias type (default: off)")
    g.add_argument("--stereotype-max-pairs", type=int, default=None, metavar="N",
                   help="score only the first N probe pairs of each bias type (a quicker, noisier check; default: all)")
    g.add_argument("--stereotype-prompt", default="",
                   help="prompt each probe sentence answers (default: none, the sentence is scored alone)")
    return p


def _check_out(out: Path) -> None:
    """The output folder must be creatable and writable; checked before any model is scored."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is an existing file, not a folder: choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create the folder: {e}") from e
    if not os.access(out, os.W_OK):
        raise ReportError(f"--out {out}: the folder is not writable")


def _max_len(args, warnings: list[str]) -> int:
    """--max-len, or the training value the models saved; warn where they disagree."""
    saved = {path: scoring.trained_max_len(path) for path in args.model}
    known = {v for v in saved.values() if v is not None}
    if args.max_len is None:
        if len(known) == 1:
            return known.pop()
        value = DEFAULT_MAX_LEN
        why = "the models saved different max_len" if known else "the models do not record their training max_len"
        warnings.append(f"scoring at --max-len {value} ({why}); pass the value they were trained with "
                        "(train_rm's --data.max_len): accuracy depends on it")
        return value
    if args.max_len < 1:
        raise ReportError(f"--max-len must be >= 1, got {args.max_len}")
    for path, value in saved.items():
        if value is not None and value != args.max_len:
            warnings.append(f"{path} was trained with max_len {value} but is scored at --max-len {args.max_len}")
    return args.max_len


def _check_options(args) -> None:
    if not args.model and not args.rewards:
        raise ReportError("nothing to report: give --model PATH (with --data FILE) or --rewards FILE")
    if args.model and not args.data:
        raise ReportError("--model needs --data FILE (the labelled preference pairs to score)")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise ReportError(f"--max-pairs must be >= 1, got {args.max_pairs}")
    if args.batch_size < 1:
        raise ReportError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.resamples < 100:
        raise ReportError(f"--resamples must be >= 100 for a 95% interval, got {args.resamples}")
    if args.label is not None and len(args.label) != len(args.model):
        raise ReportError(f"{len(args.label)} --label for {len(args.model)} --model: give one label per model or "
                          "none")
    bestofn.check_arguments(args)
    if args.stereotype_probes:
        if not args.model or args.rewards:
            raise ReportError("--stereotype-probes scores the probe pairs with each model: give the models with "
                              "--model (not --rewards)")
        # a bad file fails before the first model is scored
        stereotype.load_probes(args.stereotype_probes, args.stereotype_max_pairs)


def _score_models(args, rows, labels, max_len: int, device: str) -> list[ScoredRun]:
    """Score every model on `rows`; models that share a tokenizer share one tokenisation of the pairs."""
    runs, tokenized = [], {}
    keys = dict(prompt_key=args.prompt_key or None, chosen_key=args.chosen_key, rejected_key=args.rejected_key,
                input_template=args.input_template, apply_chat_template=args.apply_chat_template)
    probes = (stereotype.load_probes(args.stereotype_probes, args.stereotype_max_pairs) if args.stereotype_probes
              else None)
    for label, path in zip(labels, args.model):
        model, tokenizer = scoring.load_reward_model(path, device=device, dtype=args.dtype,
                                                     attn_implementation=args.attn_implementation)
        fingerprint = scoring.tokenizer_fingerprint(tokenizer)
        pairs = tokenized.get(fingerprint) if fingerprint else None
        if pairs is None:
            pairs = scoring.tokenize_pairs(rows, tokenizer, max_len, **keys)
            if fingerprint:
                tokenized[fingerprint] = pairs
        chosen, rejected, identical = scoring.score_pairs(model, tokenizer, rows, batch_size=args.batch_size,
                                                          desc=f"report {label}", tokenized=pairs)
        run = ScoredRun(label, str(path), chosen, rejected, identical)
        if probes is not None:  # while the model is loaded
            run.probe_rewards = stereotype.score_probes(
                model, tokenizer, probes, prompt=args.stereotype_prompt, max_len=max_len, batch_size=args.batch_size,
                input_template=args.input_template, apply_chat_template=args.apply_chat_template,
                desc=f"stereotype probes {label}")
        del model
        runs.append(run)
    return runs


def run_report(args) -> Report:
    _check_options(args)
    out = Path(args.out)
    _check_out(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    warnings: list[str] = []
    pairs, runs = None, []
    for f in args.rewards:
        these, more = data.load_pair_rewards(f, args.group_key)
        if pairs is not None and (these.groups, these.chosen_len, these.rejected_len) != (
                pairs.groups, pairs.chosen_len, pairs.rejected_len):
            raise ReportError(f"{f}: its models were scored on other pairs than {args.rewards[0]}")
        pairs, runs = pairs or these, runs + more
    if len(args.rewards) > 1:
        pairs = dataclasses.replace(pairs, description="rewards from " + ", ".join(map(str, args.rewards)))
    settings = {"source": "pair_rewards"}
    if args.model:
        rows = data.load_pairs(args.data, group_key=args.group_key, prompt_key=args.prompt_key or None,
                               chosen_key=args.chosen_key, rejected_key=args.rejected_key, split=args.split,
                               max_pairs=args.max_pairs)
        for path in args.model:  # fail before spending time on the first model
            scoring.check_reward_checkpoint(Path(path))
        max_len = _max_len(args, warnings)
        counts = PairSet.from_rows(rows, args.group_key, args.chosen_key, args.rejected_key).counts()
        desc = (f"{args.data}" + (f" (split {args.split})" if args.split else "") + f", {len(rows)} pairs: "
                + ", ".join(f"{g} {n}" for g, n in counts.items()))
        scored_pairs = PairSet.from_rows(rows, args.group_key, args.chosen_key, args.rejected_key, desc)
        if pairs is not None and scored_pairs.groups != pairs.groups:
            raise ReportError(f"--data {args.data} holds other pairs than the --rewards files")
        pairs = scored_pairs
        settings = {"max_len": max_len, "device": device, "dtype": args.dtype, "batch_size": args.batch_size}
        labels = args.label or [Path(m).name or str(m) for m in args.model]
        runs += _score_models(args, rows, labels, max_len, device)
    small = data.small_groups(pairs)
    if small:
        warnings.append("group(s) with fewer than 10 pairs, whose accuracy and correlations are noise: "
                        + ", ".join(f"{g} ({n} pairs)" for g, n in small.items()))
    results = analysis.analyse(pairs, runs, baseline=args.baseline, resamples=args.resamples)
    baseline = args.baseline or results[0].label
    warnings += analysis.scale_warnings(results, baseline)
    for w in warnings:
        print(f"openrlhf-fair report: warning: {w}", file=sys.stderr)
    bon = bestofn.run_audit(args, results, device, settings["max_len"]) if args.best_of_n else None
    stereo = None
    if args.stereotype_probes:
        probes = stereotype.load_probes(args.stereotype_probes, args.stereotype_max_pairs)
        scored = {m.label: [r.probe_rewards for r in m.runs] for m in results}
        stereo = stereotype.analyse_probes(probes, scored, baseline, args.resamples, prompt=args.stereotype_prompt)
    verdicts = audit.run_audit(results, baseline, pairs, bon, stereo) if len(results) > 1 else None
    settings["resamples"] = args.resamples
    report = Report(pairs, results, baseline, out, warnings, bon, stereo, verdicts)
    _write(report, args.group_key, settings)
    return report


def _write(report: Report, group_key: str, settings: dict) -> None:
    from openrlhf_fair.report.plots import write_plots

    out = report.out
    plots = write_plots(report.methods, report.pairs, out, group_key)
    extra = {"plots": plots, "warnings": report.warnings}
    sections = []
    if report.best_of_n is not None:
        extra["best_of_n"] = report.best_of_n.as_json()
        sections = bestofn.markdown_section(report.best_of_n, report.methods, report.baseline)
    if report.stereotype is not None:
        extra["stereotype"] = report.stereotype.as_json()
        sections += stereotype.markdown_section(report.stereotype, report.baseline)
    if report.audit is not None:
        extra["audit"] = report.audit.as_json()
        sections += audit.markdown_section(report.audit)
    doc = rendering.report_json(report.methods, report.pairs, baseline=report.baseline, settings=settings,
                                extra=extra)
    rendering.write_json(out / "report.json", doc)
    data.write_pair_rewards(out / "pair_rewards.jsonl", report.pairs, [r for m in report.methods for r in m.runs],
                            group_key)
    (out / "report.md").write_text(rendering.report_markdown(
        report.methods, report.pairs, baseline=report.baseline, settings=settings, group_key=group_key,
        warnings=report.warnings, plots=plots, extra_sections=sections))


def print_summary(report: Report) -> None:
    print(rendering.summary_table(report.methods, report.pairs))
    if len(report.methods) > 1:
        print(f"\nDifference to {report.baseline} (95% intervals; ** = excludes 0):\n")
        print(rendering.differences_table(report.methods, report.baseline))
        print("\nPareto view with intervals:\n")
        print(rendering.pareto_table(report.methods))
    if report.best_of_n is not None:
        print("\n" + "\n".join(bestofn.markdown_section(report.best_of_n, report.methods, report.baseline)))
    if report.stereotype is not None:
        print("\n" + "\n".join(stereotype.markdown_section(report.stereotype, report.baseline)))
    if report.audit is not None:
        print("\n" + "\n".join(audit.markdown_section(report.audit)))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_report(args)
    except ReportError as e:
        print(f"openrlhf-fair report: error: {e}", file=sys.stderr)
        return 2
    print_summary(report)
    print(f"\nreport written to {os.path.join(args.out, 'report.md')}")
    return 0
