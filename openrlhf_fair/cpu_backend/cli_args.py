"""Check and adjust a host CLI's parsed arguments for the CPU backend.

A hook on the args every OpenRLHF trainer CLI parses (`host.parsed_args`: after ``hierarchize`` on nested
releases, before ``get_strategy`` on flat ones) sees the real parser's result: flags the CPU cannot serve fail
there with a message naming them as the installed release spells them, before any model is loaded, and a
requested flash attention becomes torch's sdpa. Host arguments are read through `host.compat.host_arg`.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from openrlhf_fair.host import parsed_args
from openrlhf_fair.host.compat import host_arg, host_flag, in_host_spelling, set_host_arg

PATCH_ID = "openrlhf_fair.cpu_backend.cli_args"
CPU_ATTENTION = "sdpa"


class CpuBackendExit(SystemExit):
    """A clear CPU-backend error: prints its message to stderr when raised and exits with status 2.

    The message is printed at once because callers that run the host CLI (``runpy``) may turn a
    ``SystemExit`` into an exit code without printing it.
    """

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message = in_host_spelling(message)
        print(message, file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message


class UnsupportedOnCpu(CpuBackendExit):
    """A flag the CPU backend cannot serve; raised before any model is loaded."""


# (host argument, by its nested name; predicate on its value; why the CPU cannot serve it)
# (dotted flag, predicate on its value, why the CPU cannot serve it)
UNSUPPORTED = [
    ("ds.packing_samples", bool, "packed samples need flash-attn's variable-length CUDA kernels"),
    ("ds.ring_attn_size", lambda v: v > 1, "ring attention needs flash-attn (CUDA)"),
    ("ds.load_in_4bit", bool, "4-bit loading needs bitsandbytes' CUDA kernels"),
    ("ds.tensor_parallel_size", lambda v: v > 1, "DeepSpeed tensor parallelism is not supported on the CPU backend"),
    ("ds.param_dtype", lambda v: v == "fp16" and not _cpu_has_fp16(),
     "DeepSpeed trains fp16 on CPU only where oneDNN has fp16 kernels (not this CPU); use bf16"),
]


def _cpu_has_fp16() -> bool:
    """DeepSpeed's CPU accelerator refuses fp16 unless oneDNN has fp16 kernels (AVX512-FP16 / AMX)."""
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def check_args(args) -> None:
    """Raise `UnsupportedOnCpu` naming every flag the CPU backend cannot serve."""
    problems = [
        f"{host_flag(flag)} {host_arg(args, flag)!s}: {why}"
        for flag, bad, why in UNSUPPORTED
        if host_arg(args, flag) is not None and bad(host_arg(args, flag))
    ]
    if problems:
        raise UnsupportedOnCpu(
            "openrlhf-fair CPU backend: cannot run with\n  " + "\n  ".join(problems)
            + "\nDrop these flags, or run on a CUDA machine (`openrlhf --no-cpu ...`)."
        )


def adjust_attention(args) -> None:
    """flash_attention_2/3 (OpenRLHF's default) has no CPU kernel: use torch's sdpa and say so once."""
    requested = host_arg(args, "ds.attn_implementation")
    if requested is None or requested in ("sdpa", "eager"):
        return
    set_host_arg(args, "ds.attn_implementation", CPU_ATTENTION)
    if is_rank_zero():
        print(f"[openrlhf-fair] CPU backend: {host_flag('ds.attn_implementation')} {requested} -> {CPU_ATTENTION}",
              file=sys.stderr)


def check_parsed_args(args) -> None:
    """The parsed-args hook: refuse what the CPU cannot serve, then make flash attention sdpa."""
    check_args(args)
    adjust_attention(args)


def apply() -> Callable[[], None]:
    return parsed_args.on_parsed_args(PATCH_ID, check_parsed_args)
