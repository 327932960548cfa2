"""The CPU backend: unmodified OpenRLHF trainers on a machine without CUDA (demos, tests, debugging).

    openrlhf --cpu train_rm ...            # or OPENRLHF_FAIR_CPU=1; on by default only without CUDA
    torchrun --nproc_per_node 2 -m openrlhf_fair.cli.train_rm ...   # ranks talk over gloo on loopback

`maybe_activate(command, requested)` decides, `activate(command)` applies, in this order:
the process environment (`launch`: loopback rendezvous, a checked or free port, ``OPENRLHF_FAIR_CPU=1``
so child ranks activate too), the flash_attn import stand-in (`stand_ins`, only when flash_attn is not
installed), CPU-aware ``torch.cuda`` calls (`torch_cuda`), the DeepSpeed strategy patches (`strategy`:
CPU device mesh, no C++ JIT ops), the argument checks (`cli_args`: unsupported flags fail before
training, flash attention becomes sdpa), then for ``train_ppo_ray`` the Ray/vLLM support (`ray_support`).
Everything is undone by the function `activate` returns. Nothing happens at import time.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from openrlhf_fair.host.patching import undo_all

ENV_VAR = "OPENRLHF_FAIR_CPU"

_undo: Callable[[], None] | None = None


def _env_request() -> bool | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if value == "":
        return None
    if value in ("1", "0"):
        return value == "1"
    raise SystemExit(f"openrlhf-fair: {ENV_VAR} must be 1 or 0, got {value!r}")


def wanted(requested: bool | None = None) -> bool:
    """True/False from the caller wins; else ``OPENRLHF_FAIR_CPU``=1/0; else on only when CUDA is unavailable."""
    if requested is not None:
        return requested
    from_env = _env_request()
    if from_env is not None:
        return from_env
    import torch

    return not torch.cuda.is_available()


def is_active() -> bool:
    return _undo is not None


def maybe_activate(command: str, requested: bool | None = None) -> bool:
    """Activate the CPU backend for ``command`` when `wanted`; return whether it is active."""
    if not wanted(requested):
        os.environ[ENV_VAR] = "0"  # child processes (ranks, Ray workers) make the same choice without re-probing
        return False
    activate(command)
    return True


def _restore_environment(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


def activate(command: str) -> Callable[[], None]:
    """Apply every CPU patch for ``command`` (idempotent); return the function that undoes them all."""
    global _undo
    if _undo is not None:
        return _undo
    from . import cli_args, launch, stand_ins, strategy, torch_cuda

    saved_env = dict(os.environ)
    undos: list[Callable[[], None]] = [lambda: _restore_environment(saved_env)]

    def undo() -> None:
        global _undo
        undo_all(undos)()
        _undo = None

    try:
        os.environ[ENV_VAR] = "1"
        launch.prepare_environment(command)
        threads = launch.balance_threads()
        # Before anything imports openrlhf: openrlhf.models imports flash_attn at module top.
        flash_stand_in = stand_ins.install("flash_attn")
        if flash_stand_in:
            undos.append(lambda: stand_ins.uninstall("flash_attn"))
        undos += [torch_cuda.apply(), strategy.apply(), cli_args.apply()]
        if command == "train_ppo_ray":
            from . import ray_support

            undos.append(ray_support.apply())
    except BaseException:
        undo()
        raise
    _undo = undo
    if cli_args.is_rank_zero():
        flash = "import-only flash_attn stand-in" if flash_stand_in else "the installed flash_attn"
        print(
            f"[openrlhf-fair] CPU backend active for {command}: torch.cuda calls on CPU, DeepSpeed over gloo "
            f"without C++ JIT ops (torch AdamW), sdpa attention, {flash}, rendezvous on "
            f"{os.environ['MASTER_ADDR']}" + (f", {threads} intra-op thread(s) per rank." if threads else "."),
            file=sys.stderr,
            flush=True,
        )
    return undo
