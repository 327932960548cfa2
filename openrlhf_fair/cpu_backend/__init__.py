"""The CPU backend: unmodified OpenRLHF trainers on a machine without CUDA (demos, tests, debugging).

    openrlhf --cpu train_rm ...            # or OPENRLHF_FAIR_CPU=1; on by itself where CUDA is unavailable
    torchrun --nproc_per_node 2 -m openrlhf_fair.cli.train_rm ...   # ranks talk over gloo on loopback

Its public interface is this module; nothing outside the CLI front (`cli.runner`, `cli.main`) imports it:
- `wanted(requested)`: the caller's True/False, else ``OPENRLHF_FAIR_CPU`` = 1/0, else "CUDA is unavailable".
- `maybe_activate(command, requested)`: `activate(command)` when `wanted`; the CLI front calls it for every
  OpenRLHF command it runs (in each process: torchrun ranks and Ray workers make the same choice).
- `activate(command)` -> undo: applies, in this order, the process environment (`launch`: loopback
  rendezvous, a checked or free port, ``OPENRLHF_FAIR_CPU=1`` so child ranks activate too), the flash_attn
  import stand-in (`stand_ins`, only when flash_attn is not installed), CPU-aware ``torch.cuda`` calls
  (`torch_cuda`: set_device / synchronize / empty_cache / current_stream / current_device), the DeepSpeed
  strategy patches (`strategy`: CPU device mesh, no C++ JIT ops, torch AdamW), the flag checks
  (`cli_args`: unsupported flags fail before training, flash attention becomes sdpa), then for
  ``train_ppo_ray`` the Ray/vLLM support (`ray_support`: ``ray.init`` on loopback with logical GPUs, the vLLM
  stand-in engine, weight sync over gloo, the replay buffer's device, and the same activation in every Ray
  worker process through `host.ray_workers`). The function it returns undoes all of it.
- `serve_missing_host_imports()`: for the add-on's own model-loading commands (report, demo), only the
  flash_attn import stand-in where flash_attn is missing, on CUDA machines too; patches nothing.
- `is_active()`.
Nothing happens at import time. Every patch goes through `host.patching`; the args checks register with
`host.parsed_args` and the Ray worker setup with `host.ray_workers`, the owners of those host symbols.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from openrlhf_fair.host.patching import undo_all

ENV_VAR = "OPENRLHF_FAIR_CPU"

__all__ = ["ENV_VAR", "activate", "is_active", "maybe_activate", "serve_missing_host_imports", "wanted",
           "worker_process_setup"]

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


def serve_missing_host_imports() -> bool:
    """For add-on commands that load OpenRLHF models (report, demo): serve the import-only flash_attn stand-in
    where flash_attn is not installed, on CUDA machines too (they run their own torch code with sdpa
    attention; ``openrlhf.models`` imports flash_attn at module top). Patches nothing. True when it serves."""
    from . import stand_ins

    return stand_ins.install("flash_attn")


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
    from openrlhf_fair.host.compat import require_family

    from . import cli_args, launch, stand_ins, strategy, torch_cuda

    require_family()  # refuses an OpenRLHF outside the supported range before anything is patched
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


# Ray workers of a CPU-backend train_ppo_ray job (`ray_support` names this function as their process-start setup).
def _activate_after_import(_module) -> None:
    activate("train_ppo_ray")


def worker_process_setup(payload=None) -> None:
    """Run at the start of each Ray worker process of the job; cheap (no torch import).

    Serves the vllm / flash_attn stand-ins where the real packages are missing (Ray may import an actor's
    module, which imports them, before ``openrlhf`` itself), and activates the whole CPU backend right
    after the worker first imports ``openrlhf``.
    """
    from openrlhf_fair.host import import_hooks

    from . import stand_ins
    from .ray_support import WORKER_ENV

    os.environ.setdefault(WORKER_ENV, "1")
    for name in ("vllm", "flash_attn"):
        stand_ins.install(name)
    import_hooks.when_imported("openrlhf", _activate_after_import)
