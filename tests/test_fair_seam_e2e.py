"""One seam, two modes, the same run: real `openrlhf train_rm` on CPU (tiny Llama, group key, FR) through the
runtime call sites on the installed OpenRLHF, through the native hook points of a copy patched with `patches/`,
and through the runtime call sites on that patched copy: the same weights and the same step and eval metrics.
Plus native mode's refusals and the runtime stop on a margin that becomes non-finite in training.
"""

import json
import os
import subprocess

import pytest

from openrlhf_fair.host.compat import installed_openrlhf_version
from test_fair_patches import apply_diff, copy_openrlhf, diffs_for
from test_fair_rm_e2e import BIN, RUN_TIMEOUT, host_args, scalars, weights, workdir  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e

FAIR = ["--fairness_reg", "0.5", "--fairness_group_key", "category"]


@pytest.fixture(scope="module")
def patched_site(tmp_path_factory):
    site = copy_openrlhf(tmp_path_factory.mktemp("seam_site"))
    for diff in diffs_for(installed_openrlhf_version()):
        apply_diff(diff, site)
    return site


def train_rm(root, name, *extra, site=None, mode=None, check=True, micro=8):
    """`openrlhf train_rm` with the rm e2e settings; OpenRLHF from ``site`` when given; (returncode, log)."""
    env = {**os.environ, "OPENRLHF_FAIR_CPU": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("OPENRLHF_FAIR_PATCH_MODE", None)
    if mode is not None:
        env["OPENRLHF_FAIR_PATCH_MODE"] = mode
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    cmd = [str(BIN / "openrlhf"), "train_rm", *host_args(root, name, micro=micro), *extra]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    log = result.stdout + result.stderr
    (root / f"{name}.log").write_text(log)
    assert not check or result.returncode == 0, f"{name} failed:\n{log[-4000:]}"
    return result.returncode, log


@pytest.fixture(scope="module")
def runtime_run(workdir):  # noqa: F811
    return train_rm(workdir, "seam_runtime", *FAIR)[1]


@pytest.fixture(scope="module")
def native_run(workdir, patched_site):  # noqa: F811
    return train_rm(workdir, "seam_native", *FAIR, site=patched_site)[1]


@pytest.fixture(scope="module")
def runtime_on_patched_run(workdir, patched_site):  # noqa: F811
    return train_rm(workdir, "seam_runtime_patched", *FAIR, site=patched_site, mode="runtime")[1]


@pytest.mark.host_matrix
@pytest.mark.timeout(900)
def test_native_and_runtime_modes_give_the_same_weights_and_metrics(workdir, runtime_run, native_run,  # noqa: F811
                                                                    runtime_on_patched_run):
    assert "using OpenRLHF's native rm_loss hook" in native_run
    assert "native rm_loss hook" not in runtime_run and "native rm_loss hook" not in runtime_on_patched_run
    reference = weights(workdir, "seam_runtime")
    logged = scalars(workdir, "seam_runtime")
    # native mode trains and logs like the runtime patches: step logs, per-group eval metrics, eval loss
    for tag in ("train/fairness/F", "train/fairness/items", "train/loss", "eval/fairness/acc/helpful",
                "eval/fairness/margin_gap", "eval/fairness/F_groups", "eval/eval_loss"):
        assert tag in logged, tag
    for name in ("seam_native", "seam_runtime_patched"):
        ours = weights(workdir, name)
        assert ours.keys() == reference.keys()
        assert all(bool((ours[k] == reference[k]).all()) for k in reference), name
        assert scalars(workdir, name) == logged, name  # every tag, every step, the same value


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "extra, micro, message",
    [
        (FAIR, 8, "--fairness_group_key .* needs a runtime patch"),
        (["--fairness_reg", "0.5"], 1, "at least 2 preference pairs"),
    ],
    ids=["group-key-needs-a-dataset-patch", "micro-batch-of-one"],
)
def test_native_mode_refuses_before_training(workdir, patched_site, extra, micro, message):  # noqa: F811
    import re

    name = f"seam_refused_{micro}"
    rc, log = train_rm(workdir, name, *extra, site=patched_site, mode="native", check=False, micro=micro)
    assert rc != 0 and re.search(message, log), log[-3000:]
    assert not (workdir / name / "model.safetensors").exists()


@pytest.mark.timeout(600)
def test_margin_that_overflows_in_training_stops_the_run_naming_the_step(workdir, tmp_path):  # noqa: F811
    """A margin column value finite in the data (1e39) but infinite as the host's float32 margin tensor: the
    run stops at its first step instead of training on with loss_mean = nan/inf."""
    root = tmp_path
    (root / "tiny").symlink_to(workdir / "tiny")
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (workdir / f"{split}.jsonl").read_text().splitlines()]
        with open(root / f"{split}.jsonl", "w") as out:
            for row in rows:
                out.write(json.dumps({**row, "margin": 1e39}) + "\n")
    rc, log = train_rm(root, "seam_margin", "--fairness_reg", "0.1", "--model.margin_loss_enable", check=False)
    assert rc != 0, log[-3000:]
    assert "at training step 1 (micro-step 1): NaN/Inf in the base loss, margin" in log, log[-3000:]
    assert rc == 2 and "Traceback" not in log, log[-3000:]  # the add-on's message alone, as for bad settings
    assert not (root / "seam_margin" / "model.safetensors").exists()
