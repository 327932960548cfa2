"""One seam, two modes, the same run: real `openrlhf train_rm` on CPU (tiny Llama, group key, FR) through the
runtime call sites on the installed OpenRLHF, through the native hook points of a copy patched with `patches/`,
and through the runtime call sites on that patched copy: the same weights and the same step and eval metrics.
Plus native mode's refusals and the runtime stop on a margin that becomes non-finite in training.
"""

import json
import os
import subprocess

import pytest

from conftest import reserved_port
from fair_processes import concurrently
from fair_rm_runs import BIN, FR_GROUPS, RUN_ENV, RUN_TIMEOUT, host_args, scalars, weights
from openrlhf_fair.host.compat import installed_openrlhf_version
from test_fair_patches import apply_diff, copy_openrlhf, diffs_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def patched_site(tmp_path_factory):
    site = copy_openrlhf(tmp_path_factory.mktemp("seam_site"))
    for diff in diffs_for(installed_openrlhf_version()):
        apply_diff(diff, site)
    return site


def train_rm(root, name, *extra, site=None, mode=None, check=True, micro=8):
    """`openrlhf train_rm` with the rm e2e settings; OpenRLHF from ``site`` when given; (returncode, log)."""
    env = {**os.environ, **RUN_ENV}
    env.pop("OPENRLHF_FAIR_PATCH_MODE", None)
    if mode is not None:
        env["OPENRLHF_FAIR_PATCH_MODE"] = mode
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    cmd = [str(BIN / "openrlhf"), "train_rm", *host_args(root, name, micro=micro), *extra]
    with reserved_port() as port:  # a port of its own: runs may go at the same time
        result = subprocess.run(cmd, cwd=root, env={**env, "MASTER_PORT": str(port)}, capture_output=True, text=True,
                                timeout=RUN_TIMEOUT)
    log = result.stdout + result.stderr
    (root / f"{name}.log").write_text(log)
    assert not check or result.returncode == 0, f"{name} failed:\n{log[-4000:]}"
    return result.returncode, log


@pytest.fixture(scope="module")
def patched_runs(rm_workdir, patched_site):
    """The FR + group-key run of fair_rm_runs on the patched copy, native mode and runtime mode, both at once:
    {"seam_native": log, "seam_runtime_patched": log}."""
    native, runtime = concurrently(
        lambda: train_rm(rm_workdir, "seam_native", *FR_GROUPS, site=patched_site)[1],
        lambda: train_rm(rm_workdir, "seam_runtime_patched", *FR_GROUPS, site=patched_site, mode="runtime")[1])
    return {"seam_native": native, "seam_runtime_patched": runtime}


@pytest.mark.host_matrix
@pytest.mark.timeout(900)
def test_native_and_runtime_modes_give_the_same_weights_and_metrics(rm_runs, patched_runs):
    """The reference: fair_rm_runs' "fr_groups", the same command line in runtime mode on the installed OpenRLHF."""
    runtime_run = (rm_runs / "fr_groups.log").read_text()
    assert "using OpenRLHF's native rm_loss hook" in patched_runs["seam_native"]
    assert "native rm_loss hook" not in runtime_run
    assert "native rm_loss hook" not in patched_runs["seam_runtime_patched"]
    reference = weights(rm_runs, "fr_groups")
    logged = scalars(rm_runs, "fr_groups")
    # native mode trains and logs like the runtime patches: step logs, per-group eval metrics, eval loss
    for tag in ("train/fairness/F", "train/fairness/items", "train/loss", "eval/fairness/acc/helpful",
                "eval/fairness/margin_gap", "eval/fairness/F_groups", "eval/eval_loss"):
        assert tag in logged, tag
    for name in patched_runs:
        ours = weights(rm_runs, name)
        assert ours.keys() == reference.keys()
        assert all(bool((ours[k] == reference[k]).all()) for k in reference), name
        assert scalars(rm_runs, name) == logged, name  # every tag, every step, the same value


@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "extra, micro, message",
    [
        (FR_GROUPS, 8, "--fairness_group_key .* needs a runtime patch"),
        (["--fairness_reg", "0.5"], 1, "at least 2 preference pairs"),
    ],
    ids=["group-key-needs-a-dataset-patch", "micro-batch-of-one"],
)
def test_native_mode_refuses_before_training(rm_workdir, patched_site, extra, micro, message):
    import re

    name = f"seam_refused_{micro}"
    rc, log = train_rm(rm_workdir, name, *extra, site=patched_site, mode="native", check=False, micro=micro)
    assert rc != 0 and re.search(message, log), log[-3000:]
    assert not (rm_workdir / name / "model.safetensors").exists()


@pytest.mark.timeout(600)
def test_margin_that_overflows_in_training_stops_the_run_naming_the_step(rm_workdir, tmp_path):
    """A margin column value finite in the data (1e39) but infinite as the host's float32 margin tensor: the
    run stops at its first step instead of training on with loss_mean = nan/inf."""
    root = tmp_path
    (root / "tiny").symlink_to(rm_workdir / "tiny")
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (rm_workdir / f"{split}.jsonl").read_text().splitlines()]
        with open(root / f"{split}.jsonl", "w") as out:
            for row in rows:
                out.write(json.dumps({**row, "margin": 1e39}) + "\n")
    rc, log = train_rm(root, "seam_margin", "--fairness_reg", "0.1", "--model.margin_loss_enable", check=False)
    assert rc != 0, log[-3000:]
    assert "at training step 1 (micro-step 1): NaN/Inf in the base loss, margin" in log, log[-3000:]
    assert rc == 2 and "Traceback" not in log, log[-3000:]  # the add-on's message alone, as for bad settings
    assert not (root / "seam_margin" / "model.safetensors").exists()
