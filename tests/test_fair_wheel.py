"""The add-on as a user installs it: `pip wheel .` builds a wheel that carries everything the commands need
(the demo's bundled pairs included); installed into a fresh environment that already has OpenRLHF, it trains a
reward model with `openrlhf train_rm ... --fairness_reg 0.1` and answers `openrlhf-fair demo --help`, with the
add-on imported from the wheel, not from this checkout. The package reads no file outside itself."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import openrlhf_fair

CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGE = Path(openrlhf_fair.__file__).resolve().parent
# Only the installer works on a checkout by design (it installs the checkout itself, editable).
READS_OUTSIDE = re.compile(r"\.parent\.parent|parents\[\d+\]|REPO_ROOT")
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "mutants", "runs")


def test_the_package_reads_no_file_outside_itself():
    offenders = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path.name != "install.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if READS_OUTSIDE.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_demo_data_lives_in_the_package_and_examples_data_points_there():
    from openrlhf_fair.demo.data import PACKAGE_DATA

    assert PACKAGE_DATA.is_file() and PACKAGE_DATA.resolve().is_relative_to(PACKAGE)
    assert (CHECKOUT / "examples" / "data" / PACKAGE_DATA.name).resolve() == PACKAGE_DATA.resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` of a copy of the checkout (a build in place would leave build/ behind to leak into later wheels)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=NOT_COPIED)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--disable-pip-version-check", "-w", str(root / "dist"), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = (root / "dist").glob("openrlhf_fair-*.whl")
    return built


@pytest.mark.e2e
@pytest.mark.quick
def test_the_wheel_carries_every_module_and_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected <= names, sorted(expected - names)
    assert "openrlhf_fair/data/helpful_harmless_pairs.jsonl.gz" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "openrlhf = openrlhf_fair.cli.main:main" in entry_points
    assert "openrlhf-fair = openrlhf_fair.cli.main:main" in entry_points


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed; OpenRLHF, torch, ... come from this test environment's
    site-packages, added after the new environment's own (as with --system-site-packages), so the add-on can
    only come from the wheel."""
    env_dir = tmp_path_factory.mktemp("wheel_env") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (Path(own) / "_host_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    result = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", str(wheel)],
                            capture_output=True, text=True, timeout=300, cwd=env_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return env_dir


def in_env(env_dir: Path, code: str) -> str:
    # without PYTHONPATH: a developer's PYTHONPATH=<checkout> would import the checkout instead of the wheel
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([env_dir / "bin" / "python", "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=env_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(900)
def test_wheel_install_imports_from_the_wheel_and_ships_the_demo_data(wheel_env):
    where = json.loads(in_env(wheel_env, "import json, openrlhf_fair, openrlhf; from openrlhf_fair.demo.data import "
                                         "PACKAGE_DATA as d; print(json.dumps([openrlhf_fair.__file__, str(d), "
                                         "d.is_file(), openrlhf.__file__]))"))
    addon, data, data_exists, host = where
    assert Path(addon).is_relative_to(wheel_env) and not Path(addon).resolve().is_relative_to(CHECKOUT), addon
    assert Path(data).is_relative_to(wheel_env) and data_exists
    assert not Path(host).is_relative_to(wheel_env)  # OpenRLHF is the environment's, not the wheel's


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_wheel_install_runs_train_rm_with_fairness_reg_and_demo_help(wheel_env, tmp_path, run_cli):
    from openrlhf_fair.fixtures import build_tiny_llama
    from openrlhf_fair.host.compat import host_argv

    bin_dir = wheel_env / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OPENRLHF_FAIR_CPU": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    helped = run_cli(bin_dir / "openrlhf-fair", "demo", "--help", label="wheel: openrlhf-fair demo --help", env=env,
                     cwd=tmp_path)
    assert helped.returncode == 0 and "--backbone" in helped.stdout, helped.stderr[-2000:]

    data = Path(in_env(wheel_env, "from openrlhf_fair.demo.data import PACKAGE_DATA; print(PACKAGE_DATA)"))
    with gzip.open(data, "rt") as f:
        rows = [json.loads(line) for line in f]
    for split, n in (("train", 32), ("test", 16)):
        with open(tmp_path / f"{split}.jsonl", "w") as out:
            for r in [r for r in rows if r["split"] == split][:n]:
                out.write(json.dumps({"prompt": r["prompt"][-120:], "chosen": r["chosen"][:100],
                                      "rejected": r["rejected"][:100]}) + "\n")
    model = build_tiny_llama(tmp_path / "tiny")
    argv = host_argv([
        "--model.model_name_or_path", str(model),
        "--data.dataset", f"json@{tmp_path}", "--data.dataset_split", "train",
        "--eval.dataset", f"json@{tmp_path}", "--eval.split", "test",
        "--data.prompt_key", "prompt", "--data.max_len", "64",
        "--train.micro_batch_size", "8", "--train.batch_size", "16", "--train.max_epochs", "1",
        "--ds.zero_stage", "2", "--ckpt.output_dir", str(tmp_path / "rm"),
    ])
    trained = run_cli(bin_dir / "openrlhf", "train_rm", *argv, "--fairness_reg", "0.1",
                      label="wheel: train_rm --fairness_reg 0.1", timeout=600, env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert not trained.leftovers
    recorded = json.loads((tmp_path / "rm" / "config.json").read_text())["openrlhf_fair"]
    assert recorded["method"] == "fr" and recorded["reg"] == 0.1, recorded
    assert "openrlhf-fair: FR: loss = base - 0.1 * F" in trained.stdout + trained.stderr
