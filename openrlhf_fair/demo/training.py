"""The demo's training step: one real `openrlhf train_rm` subprocess per method and seed, its log kept, its
step counter shown as a progress bar."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from openrlhf_fair.errors import DemoError

if TYPE_CHECKING:
    from openrlhf_fair.demo.methods import Method

__all__ = ["DemoError", "openrlhf_command", "run_training", "train_command", "training_runs"]


def training_runs(methods: list[Method], seeds: list[int]) -> list[tuple[Method, int, str]]:
    """(method, training seed, model folder name) per train_rm run: `LABEL` for one seed, `LABEL_sSEED` for several."""
    if len(seeds) == 1:
        return [(m, seeds[0], m.label) for m in methods]
    return [(m, s, f"{m.label}_s{s}") for s in seeds for m in methods]


def openrlhf_command(override: str | None) -> list[str]:
    """How to call the `openrlhf` CLI: --openrlhf, else the console script beside this Python, else -m."""
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "openrlhf"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "openrlhf_fair.cli.main"]


def train_command(args, method: Method, backbone: Path, data_dir: Path, out_dir: Path, seed: int | None = None) -> list[str]:
    """The `openrlhf train_rm ...` command line for one method (what examples/*.sh spell out), with the host's
    flags spelled as the installed OpenRLHF does (`host.compat.host_argv`: flat on 0.9.3 - 0.10.1)."""
    from openrlhf_fair.host.compat import host_argv

    cmd = openrlhf_command(args.openrlhf) + ["train_rm"] + host_argv([
        "--model.model_name_or_path", str(backbone),
        "--data.dataset", str(data_dir / "train.jsonl"),
        "--eval.dataset", str(data_dir / "eval.jsonl"),
        "--data.prompt_key", "prompt",
        "--data.chosen_key", "chosen",
        "--data.rejected_key", "rejected",
        "--data.max_len", str(args.max_len),
        "--train.micro_batch_size", str(args.micro_batch_size),
        "--train.batch_size", str(args.batch_size),
        "--train.max_epochs", str(args.epochs),
        "--train.seed", str(args.seed if seed is None else seed),
        "--adam.lr", str(args.lr),
        "--lr_warmup_ratio", str(args.warmup_ratio),
        "--ds.zero_stage", "2",
        "--ds.param_dtype", "bf16",
        "--ds.attn_implementation", "sdpa",
        "--logger.logging_steps", "1",
        "--ckpt.output_dir", str(out_dir),
    ])
    return cmd + method.fairness_flags() + shlex.split(args.extra_train_args or "")


_STEP_RE = re.compile(r"Train step of epoch (\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_training(cmd: list[str], log_path: Path, title: str, quiet: bool = False) -> float:
    """Run one train_rm; full output to `log_path`, a progress bar of its steps on stderr; return wall seconds."""
    from tqdm import tqdm

    env = dict(os.environ)
    if "WORLD_SIZE" not in env:  # one process without a launcher (GPU or CPU): a one-rank world on loopback
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.setdefault("TORCHDYNAMO_DISABLE", "1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    bar = tqdm(total=None, desc=title, unit="step", file=sys.stderr, disable=quiet)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            rc = _follow(proc, log, bar)
        finally:  # interrupted (Ctrl-C, a test timeout): do not leave the training running
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    bar.close()
    elapsed = time.time() - start
    if rc != 0:
        tail = "".join(open(log_path, encoding="utf-8", errors="replace").readlines()[-25:])
        raise DemoError(f"{title}: openrlhf train_rm failed (exit {rc}) after {elapsed:.0f} s; "
                        f"last lines of {log_path}:\n{tail}")
    return elapsed


def _follow(proc, log, bar) -> int:
    """Copy the child's output to the log and its train-step counter to the progress bar; return its exit code."""
    buf = b""
    while True:
        chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
        if not chunk:
            break
        log.write(chunk.decode("utf-8", "replace"))
        buf = (buf + chunk)[-4096:]
        text = buf.decode("utf-8", "replace")
        found = _STEP_RE.findall(text)
        if found:
            _, done, total = found[-1]
            if bar.total != int(total) or bar.n != int(done):
                bar.total = int(total)
                bar.n = int(done)
                bar.refresh()
    return proc.wait()
