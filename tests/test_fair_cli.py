"""The `openrlhf` / `openrlhf-fair` command: subcommand listing, errors, and host behaviour unchanged."""

import subprocess
import sys
from pathlib import Path

import pytest
from fair_processes import concurrently

BIN = Path(sys.executable).parent


def run(*cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("program", ["openrlhf", "openrlhf-fair"])
def test_help_lists_host_and_addon_subcommands(program):
    result = run(str(BIN / program), "--help")
    assert result.returncode == 0, result.stderr
    for name in ("train_rm", "train_dpo", "train_sft", "train_ppo_ray", "report", "debias", "demo"):
        assert f"  {name} " in result.stdout


def test_unknown_subcommand_is_a_clear_error():
    result = run(str(BIN / "openrlhf"), "train_rn")
    assert result.returncode == 2
    assert "unknown subcommand 'train_rn'" in result.stderr
    assert "train_rm" in result.stderr


def test_no_subcommand_prints_usage_and_fails():
    result = run(str(BIN / "openrlhf"))
    assert result.returncode == 2
    assert "usage: openrlhf" in result.stdout


def test_version_names_the_host():
    result = run(str(BIN / "openrlhf"), "--version")
    assert result.returncode == 0
    assert "OpenRLHF 0.11.2" in result.stdout


@pytest.mark.parametrize("args", [["--help"], [], ["--no_such_flag", "1"]])
def test_host_subcommand_behaves_like_python_dash_m(args):
    """Same stdout, stderr and exit code as `python -m openrlhf.cli.lora_combiner` (a CLI that imports on CPU)."""
    ours, host = concurrently(lambda: run(str(BIN / "openrlhf"), "--no-cpu", "lora_combiner", *args),
                              lambda: run(sys.executable, "-m", "openrlhf.cli.lora_combiner", *args))
    assert (ours.returncode, ours.stdout) == (host.returncode, host.stdout)
    assert ours.stderr.splitlines()[-1:] == host.stderr.splitlines()[-1:]
    if args == ["--help"]:
        assert ours.returncode == 0 and "--lora_path" in ours.stdout
    else:
        assert ours.returncode == 2


def test_importing_the_add_on_patches_nothing():
    """Every module of the add-on imports without importing OpenRLHF, so nothing can be patched at import time."""
    probe = (
        "import importlib, pkgutil, sys, torch\n"
        "cuda_sync = torch.cuda.synchronize\n"
        "import openrlhf_fair\n"
        "names = [m.name for m in pkgutil.walk_packages(openrlhf_fair.__path__, 'openrlhf_fair.')\n"
        "         if '.stand_ins' not in m.name and m.name != 'openrlhf_fair.install']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'openrlhf' or m.startswith(('openrlhf.', 'ray', 'deepspeed')))\n"
        "assert not loaded, loaded\n"
        "assert torch.cuda.synchronize is cuda_sync\n"
        "print(len(names))\n"
    )
    result = run(sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 20
