"""Pre-run checks of `openrlhf train_rm / train_dpo / train_ppo_ray` with a fairness flag, before any model loads.

`check(command, host_argv, config)` reads the host's dataset flags from the command line (their names, types
and defaults are read from the installed OpenRLHF CLI file, `host_flags`, in the installed release's spelling:
``--data.max_len`` on 0.10.2+, ``--max_len`` on 0.9.3 - 0.10.1, `host.compat`), streams the local data files with
`openrlhf_fair.checks.data` and loads only the tokenizer of a local model folder. It raises `PreflightError`
(all problems in one message) for data that would fail mid-run or train silently wrong, and prints warnings a
user needs. Runs only when a fairness flag is given: with every flag off, `openrlhf <command>` stays exactly
OpenRLHF (its own errors included). Never changes the host's arguments.

Refused: a missing / empty / non-UTF-8 / non-JSON file, a local .gz (OpenRLHF looks it up on the HF Hub), a
row without chosen / rejected / prompt, a null / missing / empty group label, two group labels with one metric
name, a non-finite margin with ``--model.margin_loss_enable``, a tokenizer without eos token, and (train_rm)
fewer than 100 training pairs without ``--eval.dataset``. Warned: an eval group with few pairs, and eval pairs
that truncation at ``--data.max_len`` makes identical. HF dataset names, folders, csv / parquet / arrow files
and Hub models are left to the host.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from openrlhf_fair.errors import AddonError, DataError, HostMismatchError, PreflightError
from openrlhf_fair.checks.data import check_group_names, checked_rows, group_label, is_gzip
from openrlhf_fair.checks.tokenizer import identical_after_truncation, missing_eos_message
from openrlhf_fair.host.compat import host_flag, in_host_spelling

JSON_SUFFIXES = (".json", ".jsonl")  # what OpenRLHF's blending_datasets loads as JSON (lower-cased suffix)
SMALL_GROUP_PAIRS = 10  # an eval group with fewer pairs gets a warning: one pair moves its accuracy >= 10 points
TRUNCATION_SAMPLE = 256  # pairs checked for identical chosen / rejected tokens after truncation
EVAL_SHARE = 0.01  # train_rm without --eval.dataset evaluates on the first 1% of the training set

# The host flags each check reads (by their nested names, as OpenRLHF 0.10.2+ spells them; `host.compat` spells
# them for the installed release, and messages are written with these names and then spelled the same way).
PAIR_FLAGS = ("data.dataset", "data.dataset_probs", "eval.dataset", "data.max_samples", "data.prompt_key",
              "data.chosen_key", "data.rejected_key", "data.max_len", "data.input_template",
              "data.apply_chat_template", "data.tokenizer_chat_template", "data.disable_fast_tokenizer",
              "model.model_name_or_path")
HOST_FLAGS = {
    "train_rm": PAIR_FLAGS + ("model.margin_loss_enable",),
    "train_dpo": PAIR_FLAGS,
    "train_ppo_ray": ("data.prompt_dataset", "data.max_samples", "data.input_key"),
}


# --------------------------------------------------------------------------------------------- host flags
def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:  # e.g. default=int(1e8)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float"):
            return {"int": int, "float": float}[node.func.id](ast.literal_eval(node.args[0]))
        return None


def host_flags(command: str, wanted) -> dict[str, dict]:
    """``{dotted name: add_argument kwargs}`` of the ``wanted`` host flags (nested names), read from the installed
    openrlhf/cli/<command>.py where they are spelled as that release does."""
    spec = importlib.util.find_spec(f"openrlhf.cli.{command}")
    if spec is None or not spec.origin:
        raise HostMismatchError(f"openrlhf-fair: cannot find OpenRLHF's openrlhf.cli.{command}")
    spelled = {host_flag(flag): flag for flag in wanted}
    found: dict[str, dict] = {}
    for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in spelled):
            continue
        kwargs = {}
        for kw in node.keywords:
            if kw.arg == "type" and isinstance(kw.value, ast.Name) and kw.value.id in ("int", "float", "str"):
                kwargs["type"] = {"int": int, "float": float, "str": str}[kw.value.id]
            elif kw.arg in ("default", "action"):
                kwargs[kw.arg] = _literal(kw.value)
        found[spelled[node.args[0].value]] = kwargs
    missing = [flag for flag in wanted if flag not in found]
    if missing:
        raise HostMismatchError(
            f"openrlhf-fair: {spec.origin} has no flag(s) {', '.join(host_flag(f) for f in missing)}; the pre-run data "
            "checks (openrlhf_fair/checks/preflight.py) need updating for this OpenRLHF version"
        )
    return found


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad host value: the host's own parser will say so
        raise ValueError(message)


def read_host_args(command: str, argv: list[str]) -> Optional[dict]:
    """``{dotted flag: value}`` as OpenRLHF would parse ``argv``, or None where its parser would fail."""
    parser = _Parser(add_help=False, allow_abbrev=False)
    for flag, kwargs in host_flags(command, HOST_FLAGS[command]).items():
        parser.add_argument(host_flag(flag), dest=flag, **kwargs)
    try:
        namespace, _ = parser.parse_known_args(argv)
    except ValueError:
        return None
    return vars(namespace)


# --------------------------------------------------------------------------------------------- data files
@dataclass
class FileScan:
    """What one local data file holds (rows up to --data.max_samples)."""

    path: Path
    rows: int = 0
    labels: list = field(default_factory=list)  # group label per row, in order (with a group key)
    sample: list = field(default_factory=list)  # the first TRUNCATION_SAMPLE rows


@dataclass
class Findings:
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def _sources(value: Optional[str]) -> list[str]:
    """The paths of a comma-separated OpenRLHF dataset flag (``name@data_dir`` keeps the name)."""
    return [item.strip().split("@")[0].strip() for item in (value or "").split(",") if item.strip()]


def scan_sources(value, flag: str, findings: Findings, *, required, group_key=None, group_flag=None, margin=False,
                 max_rows=None) -> Optional[list[FileScan]]:
    """Scan each local JSON file of a dataset flag; None when some source is left to the host (its size unknown)."""
    scans: list[Optional[FileScan]] = []
    for source in _sources(value):
        path = Path(source)
        suffix = path.suffix.lower()
        if is_gzip(source) and (path.is_file() or Path(source[:-3]).suffix.lower() in JSON_SUFFIXES):
            plain = source[: -len(".gz")]
            findings.errors.append(
                f"{flag} {source}: OpenRLHF cannot load a compressed file (it looks the name up on the HF Hub and "
                f"fails after a timeout); decompress it first: `gunzip -k {source}`, then pass {flag} {plain}"
            )
            scans.append(None)
            continue
        if suffix not in JSON_SUFFIXES or path.is_dir():
            scans.append(None)  # HF dataset name, folder, csv / parquet / arrow: the host's business
            continue
        scan = FileScan(path)
        try:
            for _, row in checked_rows(path, required=required, group_key=group_key, group_flag=group_flag,
                                       margin=margin, max_rows=max_rows):
                scan.rows += 1
                if group_key is not None:
                    scan.labels.append(group_label(row.get(group_key)))
                if len(scan.sample) < TRUNCATION_SAMPLE:
                    scan.sample.append(row)
        except DataError as e:
            findings.errors += [f"{flag}: {line}" for line in str(e).splitlines()]
            scan = None
        scans.append(scan)
    return None if any(s is None for s in scans) else scans


def _group_counts(labels) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _warn_small_groups(counts: dict[str, int], where: str, findings: Findings) -> None:
    small = {label: n for label, n in sorted(counts.items()) if n < SMALL_GROUP_PAIRS}
    if small:
        findings.warnings.append(
            f"{where}: group(s) with fewer than {SMALL_GROUP_PAIRS} eval pairs: "
            + ", ".join(f"{label!r} ({n})" for label, n in small.items())
            + "; their accuracy, reward and margin metrics are noise"
        )


# --------------------------------------------------------------------------------------------- tokenizer
def _tokenizer(args: dict):
    """The model folder's tokenizer as OpenRLHF loads it (AutoTokenizer), or None for a Hub name."""
    model = args["model.model_name_or_path"]
    if not model or not Path(model).is_dir():
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True,
                                                  use_fast=not args["data.disable_fast_tokenizer"])
    except Exception:  # noqa: BLE001  (the host loads it next and reports its own error)
        return None
    if args["data.tokenizer_chat_template"]:
        tokenizer.chat_template = args["data.tokenizer_chat_template"]
    return tokenizer


def _warn_identical(rows: list, where: str, args: dict, tokenizer, findings: Findings) -> None:
    """Warn when truncation at --data.max_len makes most of ``rows`` identical pairs (the report's own check)."""
    if not rows:
        return

    template = args["data.input_template"]
    same = identical_after_truncation(
        rows, tokenizer, args["data.max_len"], prompt_key=args["data.prompt_key"], chosen_key=args["data.chosen_key"],
        rejected_key=args["data.rejected_key"], input_template=template if template and "{}" in template else None,
        apply_chat_template=args["data.apply_chat_template"],
    )
    if sum(same) * 2 > len(same):
        findings.warnings.append(
            f"{where}: {sum(same)} of the first {len(same)} pairs have identical chosen and rejected tokens after "
            f"truncation at --data.max_len {args['data.max_len']} (the prompt fills it): their margin is exactly 0 "
            "and accuracy counts them wrong (acc near 0). Raise --data.max_len, or shorten or filter those pairs"
        )


# --------------------------------------------------------------------------------------------- the checks
def check_pairs(command: str, args: dict, config, findings: Findings) -> None:
    group_key = getattr(config, "group_key", None)
    keys = dict(required=(args["data.prompt_key"], args["data.chosen_key"], args["data.rejected_key"]),
                group_key=group_key, margin=bool(args.get("model.margin_loss_enable")))
    max_rows = args["data.max_samples"]
    train = scan_sources(args["data.dataset"], "--data.dataset", findings, max_rows=max_rows, **keys)
    evals = scan_sources(args["eval.dataset"], "--eval.dataset", findings, **keys) if args["eval.dataset"] else None
    labels_by_file = {str(s.path): s.labels for s in (train or []) + (evals or [])}

    eval_rows, eval_labels, eval_where = None, None, None
    if evals is not None:
        eval_rows = [row for s in evals for row in s.sample]
        eval_labels = [label for s in evals for label in s.labels]
        eval_where = "--eval.dataset " + args["eval.dataset"]
    elif command == "train_rm" and train is not None and not args["data.dataset_probs"]:
        total = sum(s.rows for s in train)
        if max_rows is not None:
            total = min(total, max_rows)
        n_eval = int(total * EVAL_SHARE)
        if n_eval == 0:
            findings.errors.append(
                f"--data.dataset {args['data.dataset']}: {total} training pairs and no --eval.dataset: OpenRLHF's "
                "train_rm then evaluates on the first 1% of the training set, which is empty (it fails with "
                "\"Column 'prompt' doesn't exist\"). Pass --eval.dataset FILE, or train on at least 100 pairs"
            )
        else:
            eval_rows = [row for s in train for row in s.sample][:n_eval]
            eval_labels = [label for s in train for label in s.labels][:n_eval]
            eval_where = f"the eval set (first {n_eval} rows of --data.dataset, OpenRLHF's 1% split)"

    if group_key is not None and train is not None and (evals is not None or not args["eval.dataset"]):
        every = [label for labels in labels_by_file.values() for label in labels]
        try:
            check_group_names(every, column=group_key, where=", ".join(labels_by_file))
        except DataError as e:
            findings.errors.append(str(e))
        if eval_labels:
            _warn_small_groups(_group_counts(eval_labels), eval_where, findings)

    tokenizer = _tokenizer(args)
    if tokenizer is not None and tokenizer.eos_token is None:
        findings.errors.append(missing_eos_message(f"--model.model_name_or_path {args['model.model_name_or_path']}"))
        return
    if tokenizer is not None and command == "train_rm" and not findings.errors and eval_rows:
        _warn_identical(eval_rows, eval_where, args, tokenizer, findings)


def check_prompts(args: dict, config, findings: Findings) -> None:
    key = getattr(config, "label_key", None)
    scans = scan_sources(args["data.prompt_dataset"], "--data.prompt_dataset", findings,
                         required=(args["data.input_key"],), group_key=key, group_flag=f"--fair_unit label:{key}",
                         max_rows=args["data.max_samples"])
    if key is not None and scans:
        try:
            check_group_names([label for s in scans for label in s.labels], column=key,
                              where=", ".join(str(s.path) for s in scans))
        except DataError as e:
            findings.errors.append(str(e))


def check(command: str, host_argv: list[str], config) -> Findings:
    """Check the run before it starts: raise `PreflightError` naming every problem; print warnings (rank 0)."""
    findings = Findings()
    if command not in HOST_FLAGS:
        return findings
    args = read_host_args(command, host_argv)
    if args is None:
        return findings
    if command == "train_ppo_ray":
        check_prompts(args, config, findings)
    else:
        check_pairs(command, args, config, findings)
    if findings.warnings and os.environ.get("RANK", "0") in ("", "0"):
        for warning in findings.warnings:
            print(in_host_spelling(f"openrlhf-fair: warning: {warning}"), file=sys.stderr, flush=True)
    if findings.errors:
        raise PreflightError("openrlhf-fair: the run cannot start:\n- " + "\n- ".join(findings.errors))
    return findings
