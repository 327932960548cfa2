"""Checks of local data files (preference pairs, PPO prompts), shared by the pre-run checks and the report.

One rule for every reader, so that `openrlhf train_rm --fairness_group_key`, `train_dpo`, `train_ppo_ray
--fair_unit label:KEY` and `openrlhf-fair report` accept and refuse the same files:

- `iter_rows(path)` streams the rows of a .jsonl / .json file (also .jsonl.gz / .json.gz: the report reads them;
  the trainers' pre-run check refuses .gz, which OpenRLHF cannot load) and refuses, naming the file and the row,
  bytes that are not UTF-8, lines that are not JSON objects, a truncated .gz and a file with no rows.
- `checked_rows(path, ...)` yields the rows and refuses, naming file, row and column, a missing or null
  required column (chosen / rejected / prompt), a null, missing or empty group label and, when margins are used,
  a margin that is not a finite number. `group_label` is the one rule for what a label is.
- `check_group_names(labels)` refuses two labels that would share one metric name (see
  `openrlhf_fair.core.measures.metric_safe_names`) or one group (``1`` and ``"1"``).

Plain Python (json, gzip); the only torch import is `metrics`, inside `check_group_names`.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Optional

from openrlhf_fair.errors import AddonError, FairnessInputError, DataError

ROWS_NAMED = 5  # at most this many row numbers in one message
NEWLINE = b"\n"


def is_gzip(path) -> bool:
    return str(path).endswith(".gz")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def _decode(path: Path, raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if where == "list":  # a whole .json file: name the line
            where = f"line {raw.count(NEWLINE, 0, e.start) + 1}"
        raise DataError(
            f"{path}: {where} is not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); re-encode the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
        ) from None


def _object(path: Path, value, row: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{path}: row {row} is a JSON {type(value).__name__}, not an object with the pair's columns")
    return value


def _json_lines(path: Path, f) -> Iterator[tuple[int, object]]:
    for number, raw in enumerate(f, start=1):
        line = _decode(path, raw, f"row {number}").strip().lstrip("\ufeff")
        if line:
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {number} is not valid JSON ({e.msg} at column {e.colno})") from None


def iter_rows(path) -> Iterator[tuple[int, dict]]:
    """``(row number, row)`` for each JSON object in a JSON-lines file, or in a .json file holding one list.

    Row numbers are 1-based lines of a JSON-lines file, 1-based positions in a JSON list. Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    count = 0
    try:
        with _open_binary(path) as f:
            is_list = f.read(4096).lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"[")
        with _open_binary(path) as f:
            if is_list:  # one JSON list (`datasets` reads a .json file holding a list too)
                try:
                    rows = json.loads(_decode(path, f.read(), "list"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
                numbered = enumerate(rows if isinstance(rows, list) else [rows], start=1)
            else:
                numbered = _json_lines(path, f)
            for count, (number, value) in enumerate(numbered, start=1):
                yield number, _object(path, value, number)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: the gzip file is truncated or corrupt ({e}); download or compress it again") from None
    if count == 0:
        raise DataError(f"{path}: the file has no rows (it is empty)")


def group_label(value) -> Optional[str]:
    """The group name a label value stands for, or None when it is no label (null, NaN, empty, a list ...).

    Training (``--fairness_group_key``), PPO (``--fair_unit label:KEY``) and the report all use this rule.
    """
    if value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    label = str(value)
    return label if label.strip() else None


def _rows_text(rows: list[int], total: int) -> str:
    shown = ", ".join(map(str, rows[:ROWS_NAMED]))
    return f"row {shown}" if total == 1 else f"rows {shown}{', ...' if total > ROWS_NAMED else ''} ({total} rows)"


class _Problems:
    """Collects (what, rows) so one message names every kind of problem of a file, with its first rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, list[int]] = {}
        self.totals: dict[str, int] = {}
        self.hints: dict[str, str] = {}

    def add(self, what: str, row: Optional[int], hint: str) -> None:
        """One problem ``what`` at ``row`` (None: of the whole file) and how to fix it."""
        self.rows.setdefault(what, [])
        if row is not None and len(self.rows[what]) < ROWS_NAMED:
            self.rows[what].append(row)
        self.totals[what] = self.totals.get(what, 0) + 1
        self.hints[what] = hint

    def raise_any(self) -> None:
        if self.rows:
            lines = [f"{self.path}: " + (f"{_rows_text(rows, self.totals[what])}: " if rows else "")
                     + f"{what}; {self.hints[what]}" for what, rows in self.rows.items()]
            raise DataError("\n".join(lines))


def checked_rows(
    path,
    *,
    required: Iterable[str] = (),
    group_key: Optional[str] = None,
    group_flag: Optional[str] = None,
    margin: bool = False,
    max_rows: Optional[int] = None,
) -> Iterator[tuple[int, dict]]:
    """`iter_rows`, refusing (after the last row, every problem in one `DataError`) rows that lack a ``required``
    column or have it null, rows whose ``group_key`` label is null / missing / empty (`group_label`), and, with
    ``margin``, a ``margin`` value that is not a finite number (OpenRLHF reads the column ``margin``).
    ``group_flag`` names the flag in the messages (default ``--fairness_group_key KEY``).

    Only the first ``max_rows`` rows are read (OpenRLHF's ``--data.max_samples``); the report reads them all.
    """
    path = Path(path)
    group_flag = group_flag or f"--fairness_group_key {group_key}"
    problems = _Problems(path)
    required = [key for key in required if key]
    seen = 0
    kinds: dict[str, tuple[type, object]] = {}  # group text -> (type, value) of its first raw label
    for index, (row, values) in enumerate(iter_rows(path)):
        if max_rows is not None and index >= max_rows:
            break
        for key in required:
            if values.get(key) is None:
                what = "has no" if key not in values else "has a null"
                problems.add(f"{what} '{key}'", row, f"every row needs a '{key}' (columns: {', '.join(values)})")
        if group_key is not None and group_label(values.get(group_key)) is None:
            state = "missing" if group_key not in values else f"{values[group_key]!r}"
            problems.add(
                f"group label '{group_key}' is {state}", row,
                f"{group_flag} needs a non-empty label in every row: fill it in or remove those rows",
            )
        elif group_key is not None:
            value = values[group_key]
            kind, first = kinds.setdefault(group_label(value), (type(value), value))
            if kind is not type(value):
                problems.add(f"label {value!r} and an earlier row's {first!r} become one group", row,
                             f"spell the labels of column '{group_key}' one way")
        if margin and "margin" in values and values["margin"] is not None:
            value = values["margin"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.add(f"'margin' is {value!r}", row,
                             "--model.margin_loss_enable needs a finite number (or null for 0) in every row")
        seen += 1
        yield row, values
    absent = f"group label '{group_key}' is missing"
    if group_key is not None and problems.totals.get(absent) == seen:  # the column itself is missing: say so
        del problems.rows[absent]
        problems.add(f"no row has the column '{group_key}'", None,
                     f"{group_flag} needs it in every file (training and eval)")
    problems.raise_any()


def check_group_names(labels: Iterable[str], *, column: str, where: str) -> None:
    """Refuse two group labels that would share one metric name (``help ful`` and ``help/ful``): one group's
    metrics would overwrite the other's. ``where`` names the file(s) the labels come from."""
    from openrlhf_fair.core.measures import metric_safe_names

    try:
        metric_safe_names(labels)
    except FairnessInputError as e:
        raise DataError(f"{where}: column '{column}': {e}") from None
