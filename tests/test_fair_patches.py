"""`patches/`: the upstreamable hook diffs apply to the pinned OpenRLHF, name the stale hunk when they do not,
and the add-on uses the native hooks (no runtime patch) on a patched copy of OpenRLHF."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openrlhf_fair.host.compat import installed_openrlhf_version
from openrlhf_fair.host.patch_folders import HOOK_DIFF_FOLDERS, hook_diff_folder

REPO = Path(__file__).resolve().parents[1]
PATCHES = REPO / "patches"
HOOK_DIFF = "extension-hooks.diff"


# ── Reading diffs and checking them against a source tree ──


@dataclass
class FileDiff:
    path: str  # relative to the site-packages folder that holds `openrlhf/`
    new_file: bool
    hunks: list[str] = field(default_factory=list)  # "@@ -a,b +c,d @@ context" headers, in order


def parse_diff(text: str) -> list[FileDiff]:
    files: list[FileDiff] = []
    old_path = None
    for line in text.splitlines():
        if line.startswith("--- "):
            old_path = line[4:].split("\t")[0]
        elif line.startswith("+++ "):
            new_path = line[4:].split("\t")[0]
            new_file = old_path == "/dev/null"
            files.append(FileDiff(path=new_path.split("/", 1)[1], new_file=new_file))
        elif line.startswith("@@ ") and files:
            files[-1].hunks.append(line)
    return files


def stale_hunks(diff: Path, root: Path) -> list[str]:
    """Why ``diff`` does not apply to the source tree ``root`` (empty when it applies), naming file and hunk."""
    files = parse_diff(diff.read_text(encoding="utf-8"))
    problems = []
    for file in files:
        exists = (root / file.path).is_file()
        if file.new_file and exists:
            problems.append(f"{diff.name}: {file.path} already exists (the diff creates it)")
        if not file.new_file and not exists:
            problems.append(f"{diff.name}: {file.path} is missing (all {len(file.hunks)} hunks stale)")
    if problems:
        return problems
    result = subprocess.run(
        ["patch", "-p1", "--dry-run", "--batch", "--forward", "--fuzz=0", "-d", str(root), "-i", str(diff)],
        capture_output=True,
        text=True,
    )
    by_path = {file.path: file for file in files}
    current = None
    for line in result.stdout.splitlines():
        checking = re.match(r"checking file (\S+)", line)
        failed = re.match(r"Hunk #(\d+) FAILED at (\d+)", line)
        if checking:
            current = by_path.get(checking.group(1))
        elif failed and current is not None:
            number = int(failed.group(1))
            problems.append(
                f"{diff.name}: {current.path} hunk #{number} `{current.hunks[number - 1]}` does not apply "
                f"(patch tried line {failed.group(2)})"
            )
    if result.returncode != 0 and not problems:
        problems.append(f"{diff.name}: patch failed:\n{result.stdout}{result.stderr}")
    return problems


def diffs_for(version: str) -> list[Path]:
    """The diffs for ``version``: the folder `host.compat` names for its range of releases."""
    folder = PATCHES / hook_diff_folder(version)
    assert folder.is_dir(), f"patches/ has no {folder.name} folder (OpenRLHF {version})"
    return sorted(folder.glob("*.diff"))


def installed_openrlhf_dir() -> Path:
    spec = importlib.util.find_spec("openrlhf")
    assert spec is not None and spec.origin, "OpenRLHF is not installed"
    return Path(spec.origin).parent


def copy_openrlhf(dest: Path) -> Path:
    """A copy of the installed OpenRLHF package under ``dest/openrlhf``; returns ``dest``."""
    shutil.copytree(installed_openrlhf_dir(), dest / "openrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def apply_diff(diff: Path, root: Path) -> None:
    result = subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "-d", str(root), "-i", str(diff)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{diff} did not apply:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def pristine_copy(tmp_path_factory) -> Path:
    return copy_openrlhf(tmp_path_factory.mktemp("openrlhf-pristine"))


@pytest.fixture(scope="module")
def patched_copy(tmp_path_factory) -> Path:
    root = copy_openrlhf(tmp_path_factory.mktemp("openrlhf-patched"))
    for diff in diffs_for(installed_openrlhf_version()):
        apply_diff(diff, root)
    return root


# ── The diffs against the pinned release ──


def test_every_supported_release_has_its_hook_diff():
    for _, _, folder in HOOK_DIFF_FOLDERS:
        assert (PATCHES / folder / HOOK_DIFF).is_file(), f"patches/{folder}/{HOOK_DIFF}"
    assert {path.name for path in PATCHES.glob("openrlhf-*")} == {folder for _, _, folder in HOOK_DIFF_FOLDERS}
    assert (PATCHES / "README.md").is_file()


def test_every_diff_applies_to_the_installed_openrlhf(pristine_copy):
    version = installed_openrlhf_version()
    diffs = diffs_for(version)
    assert diffs
    problems = [problem for diff in diffs for problem in stale_hunks(diff, pristine_copy)]
    assert not problems, f"stale diff for the installed OpenRLHF {version}:\n" + "\n".join(problems)
    subprocess.run(["git", "init", "-q"], cwd=pristine_copy, check=True)  # its own root, wherever tmp is
    for diff in diffs:  # git's stricter check agrees (no fuzz, exact context)
        result = subprocess.run(
            ["git", "apply", "--check", "-p1", str(diff)], cwd=pristine_copy, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_a_stale_diff_names_file_and_hunk(tmp_path):
    """What the check reports when a new OpenRLHF release moved the code a hunk touches."""
    root = copy_openrlhf(tmp_path)
    rm_trainer = root / "openrlhf/trainer/rm_trainer.py"
    source = rm_trainer.read_text(encoding="utf-8")
    assert source.count('logs_dict["aux_loss"] = aux_loss.item()') == 1
    rm_trainer.write_text(source.replace('logs_dict["aux_loss"]', 'logs_dict["moe_aux_loss"]'), encoding="utf-8")
    (diff,) = diffs_for(installed_openrlhf_version())
    text = diff.read_text(encoding="utf-8")
    hunks = {file.path: file.hunks for file in parse_diff(text)}
    rm_section = text.split("diff --git a/openrlhf/trainer/rm_trainer.py", 1)[1].split("\ndiff --git", 1)[0]
    logs_hunk = rm_section.split("logs_dict.update(get_loss_logs", 1)[0].count("\n@@ ")  # the hunk holding it
    header = hunks["openrlhf/trainer/rm_trainer.py"][logs_hunk - 1].split(" @@")[0]

    problems = stale_hunks(diff, root)

    assert len(problems) == 1, problems
    assert "openrlhf/trainer/rm_trainer.py" in problems[0]
    assert f"hunk #{logs_hunk} `{header}" in problems[0]

    (root / "openrlhf/trainer/dpo_trainer.py").unlink()
    problems = stale_hunks(diff, root)
    n_dpo = len(hunks["openrlhf/trainer/dpo_trainer.py"])
    assert problems == [f"{HOOK_DIFF}: openrlhf/trainer/dpo_trainer.py is missing (all {n_dpo} hunks stale)"]


def added_lines(diff: Path) -> list[str]:
    return sorted(line for line in diff.read_text(encoding="utf-8").splitlines()
                  if line.startswith("+") and not line.startswith("+++"))


@pytest.mark.parametrize("folder", [folder for _, _, folder in HOOK_DIFF_FOLDERS])
def test_diff_adds_no_hook_calls_beyond_the_documented_points(folder):
    """Each diff stays small: one new module and one call per documented hook point; the diffs of the release
    ranges add the same lines and differ only in their context."""
    diff = PATCHES / folder / HOOK_DIFF
    files = parse_diff(diff.read_text(encoding="utf-8"))
    assert {f.path for f in files} == {
        "openrlhf/utils/extension_hooks.py",
        "openrlhf/trainer/rm_trainer.py",
        "openrlhf/trainer/dpo_trainer.py",
        "openrlhf/trainer/ppo_utils/experience_maker.py",
    }
    assert [f.path for f in files if f.new_file] == ["openrlhf/utils/extension_hooks.py"]
    assert added_lines(diff) == added_lines(PATCHES / HOOK_DIFF_FOLDERS[-1][2] / HOOK_DIFF)


# ── The patched copy: hooks are no-ops by default and the add-on prefers them ──


def load_hooks_module(site: Path):
    """The diff's ``extension_hooks.py`` from a patched copy, loaded alone (it imports nothing from OpenRLHF)."""
    path = site / "openrlhf/utils/extension_hooks.py"
    spec = importlib.util.spec_from_file_location("extension_hooks_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_module_is_a_no_op_until_registered(patched_copy):
    hooks = load_hooks_module(patched_copy)
    loss, experiences = object(), [1, 2]
    assert hooks.apply_loss_hooks("trainer", loss) is loss
    assert hooks.apply_experience_hooks("maker", experiences) is experiences
    assert hooks.get_loss_logs(loss) == {}

    class Logged:
        def extra_logs(self):
            return {"fairness/F": 0.5}

    def wrap(trainer, loss_fn):
        return Logged()

    remove = hooks.register_loss_hook(wrap)
    assert hooks.register_loss_hook(wrap) is not None and len(hooks._loss_hooks) == 1  # twice is harmless
    hooked = hooks.apply_loss_hooks("trainer", loss)
    assert isinstance(hooked, Logged) and hooks.get_loss_logs(hooked) == {"fairness/F": 0.5}
    remove()
    assert hooks.apply_loss_hooks("trainer", loss) is loss
    remove_exp = hooks.register_experience_hook(lambda maker, exps: exps[::-1])
    assert hooks.apply_experience_hooks("maker", [1, 2]) == [2, 1]
    remove_exp()
    assert hooks.apply_experience_hooks("maker", [1, 2]) == [1, 2]
    with pytest.raises(TypeError, match="hook must be callable"):
        hooks.register_loss_hook("not callable")


def test_native_registration_twice_harmless_other_settings_refused_undo_removes(patched_copy, monkeypatch):
    from openrlhf_fair.host import native_hooks

    hooks = load_hooks_module(patched_copy)
    monkeypatch.setattr(native_hooks, "hooks_module", lambda: hooks)

    class Trainer:
        pass

    class OtherTrainer:
        pass

    undo = native_hooks.register_loss_hook(Trainer, lambda trainer, loss: ("fair", loss), "test.loss", settings=1)
    again = native_hooks.register_loss_hook(Trainer, lambda trainer, loss: ("twice", loss), "test.loss", settings=1)
    assert len(hooks._loss_hooks) == 1
    with pytest.raises(ValueError, match="test.loss is already registered with other settings: 1"):
        native_hooks.register_loss_hook(Trainer, lambda trainer, loss: loss, "test.loss", settings=2)
    assert hooks.apply_loss_hooks(Trainer(), "host loss") == ("fair", "host loss")
    assert hooks.apply_loss_hooks(OtherTrainer(), "host loss") == "host loss"  # other trainers untouched
    again()
    assert len(hooks._loss_hooks) == 1  # the no-op undo of the second registration removed nothing
    undo()
    assert hooks._loss_hooks == [] and hooks.apply_loss_hooks(Trainer(), "host loss") == "host loss"
    native_hooks.register_experience_hook(lambda maker, exps: exps + ["shaped"], "test.exp")()
    assert hooks._experience_hooks == []


# ── Detection and the mode switch (in this process: the installed, unpatched OpenRLHF) ──


@pytest.fixture(scope="module")
def stand_ins_for_host():
    from openrlhf_fair.cpu_backend import stand_ins

    installed = [name for name in ("flash_attn", "vllm") if stand_ins.install(name)]
    yield
    for name in installed:
        stand_ins.uninstall(name)


def host_is_patched() -> bool:
    return importlib.util.find_spec("openrlhf.utils.extension_hooks") is not None


@pytest.mark.skipif(host_is_patched(), reason="the installed OpenRLHF carries patches/")
def test_unpatched_host_uses_runtime_patches_and_native_mode_names_what_is_missing(stand_ins_for_host, monkeypatch):
    from openrlhf_fair.host import native_hooks
    from openrlhf_fair.errors import HostMismatchError

    monkeypatch.delenv(native_hooks.PATCH_MODE_ENV, raising=False)
    assert native_hooks.patch_mode() == "auto" and native_hooks.runtime_patching_allowed()
    assert [native_hooks.use_native_hook(point) for point in native_hooks.HOOK_POINTS] == [False, False, False]
    monkeypatch.setenv(native_hooks.PATCH_MODE_ENV, "native")
    missing = r"lacks the native hook point 'dpo_loss'.*extension_hooks.*module missing"
    with pytest.raises(HostMismatchError, match=missing):
        native_hooks.use_native_hook("dpo_loss")
    with pytest.raises(HostMismatchError, match="--fairness_group_key .* needs a runtime patch"):
        native_hooks.require_runtime_patching("--fairness_group_key (group labels from the dataset)")
    monkeypatch.setenv(native_hooks.PATCH_MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match="OPENRLHF_FAIR_PATCH_MODE='sometimes': expected one of auto, native, runtime"):
        native_hooks.patch_mode()


@pytest.mark.skipif(not host_is_patched(), reason="runs against a patched OpenRLHF (see the native-mode test below)")
def test_native_host_hook_points_are_detected(stand_ins_for_host):
    from openrlhf_fair.host import native_hooks

    assert all(not native_hooks.missing_call_sites(point) for point in native_hooks.HOOK_POINTS)
    assert native_hooks.patch_mode() == "native" and not native_hooks.runtime_patching_allowed()


@pytest.mark.skipif(not host_is_patched(), reason="runs against a patched OpenRLHF (see the native-mode test below)")
def test_native_host_dpo_trainer_gets_fair_loss_and_logs_through_the_hook(stand_ins_for_host):
    """The hooked DPOTrainer of a patched OpenRLHF: FairDPOLoss from inside __init__, its metrics in the step
    logs through get_loss_logs, nothing replaced on the class, the choice said once."""
    from types import SimpleNamespace

    import torch
    from transformers import PretrainedConfig

    import openrlhf.trainer.dpo_trainer as host
    from openrlhf.utils.extension_hooks import get_loss_logs
    from openrlhf_fair.settings import RewardFairnessConfig
    from openrlhf_fair.core.dpo_losses import FairDPOLoss
    from openrlhf_fair.features import pairwise_trainer
    from openrlhf_fair.host.patching import is_patched

    ns = SimpleNamespace
    strategy = ns(
        args=ns(
            model=ns(aux_loss_coef=0, nll_loss_coef=0, label_smoothing=0.0, ipo_enable=False),
            ds=ns(packing_samples=False, ring_attn_size=1, tensor_parallel_size=1),
            logger=ns(wandb=ns(key=None), tensorboard_dir=None),
            train=ns(micro_batch_size=4),
        ),
        world_size=1, accumulated_gradient=1, print=lambda *msg: None, _unwrap_model=lambda model: model,
    )  # fmt: skip
    model = ns(config=PretrainedConfig())
    undo = pairwise_trainer.apply_dpo_fairness(RewardFairnessConfig(reg=0.1))
    try:
        assert not any(is_patched(host.DPOTrainer, name) for name in pairwise_trainer.WRAPPED_PARAMETERS)
        trainer = host.DPOTrainer(model, None, strategy, None, None, None, None, None, beta=0.1)
        assert isinstance(trainer.loss_fn, FairDPOLoss) and model.config.openrlhf_fair["reg"] == 0.1
        logps = [torch.tensor([-3.0, -4.0, -5.0, -2.0], requires_grad=True) for _ in range(2)]
        trainer.loss_fn(*logps, torch.tensor([-3.5, -4.0, -4.0, -2.5]), torch.tensor([-3.0, -4.5, -5.0, -1.0]))
        assert set(get_loss_logs(trainer.loss_fn)) >= {"fairness/F", "fairness/jain", "fairness/gini", "fairness/base_loss"}
    finally:
        undo()
    assert type(host.DPOTrainer(model, None, strategy, None, None, None, None, None).loss_fn).__name__ == "DPOLoss"


@pytest.mark.skipif(not host_is_patched(), reason="runs against a patched OpenRLHF (see the native-mode test below)")
def test_native_host_group_key_falls_back_to_runtime_patches_only_in_auto_mode(stand_ins_for_host, monkeypatch):
    """--fairness_group_key's dataset patch has no hook point: refused in native (audit) mode; in auto mode only
    the dataset is runtime-patched and the trainer keeps its native call sites (one seam: same features)."""
    import openrlhf.datasets.reward_dataset as host_dataset
    import openrlhf.trainer.dpo_trainer as host
    from openrlhf_fair.settings import RewardFairnessConfig
    from openrlhf_fair.features import pairwise_trainer
    from openrlhf_fair.errors import HostMismatchError
    from openrlhf_fair.host.patching import is_patched

    config = RewardFairnessConfig(reg=0.1, group_key="category")
    with pytest.raises(HostMismatchError, match="--fairness_group_key .* needs a runtime patch"):
        pairwise_trainer.apply_dpo_fairness(config)
    assert not is_patched(host.DPOTrainer, "__init__")
    monkeypatch.setenv("OPENRLHF_FAIR_PATCH_MODE", "auto")
    undo = pairwise_trainer.apply_dpo_fairness(config)
    try:
        assert not any(is_patched(host.DPOTrainer, name) for name in pairwise_trainer.WRAPPED_PARAMETERS)
        assert is_patched(host_dataset.RewardDataset, "process_data")
    finally:
        undo()
    assert not is_patched(host_dataset.RewardDataset, "process_data")


# ── The add-on's integration tests against a patched copy, in native mode ──

# Fails any test during which a trainer / experience-maker method is runtime-patched.
NATIVE_GUARD = """
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    import sys
    from openrlhf_fair.host.patching import is_patched
    TRAINER_METHODS = ("__init__", "fit", "save_logs_and_checkpoints", "evaluate")
    for module, cls, names in [
        ("openrlhf.trainer.rm_trainer", "RewardModelTrainer", TRAINER_METHODS),
        ("openrlhf.trainer.dpo_trainer", "DPOTrainer", TRAINER_METHODS),
        ("openrlhf.trainer.ppo_utils.experience_maker", "RemoteExperienceMaker", ("compute_advantages_and_returns",)),
    ]:
        if module in sys.modules:
            patched = [name for name in names if is_patched(getattr(sys.modules[module], cls), name)]
            assert not patched, f"runtime patch in native mode: {cls}.{patched}"
"""

NATIVE_SELECTION = [
    ("tests/test_fair_patches.py", "native_host"),
    ("tests/test_fair_rm_patch.py", "wraps_the_host_loss or global_scope_with_one_pair or (bad_runs_fail and not packing)"),
    ("tests/test_fair_ppo_patch.py", "advantages_scaled_exactly or measure_only"),
]


def native_env(site: Path, extra: Path | None = None) -> dict:
    """Environment overrides: ``openrlhf`` imported from the copy under ``site``; native mode."""
    paths = [str(site), *([str(extra)] if extra else []), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path), "OPENRLHF_FAIR_PATCH_MODE": "native"}


@pytest.mark.e2e
@pytest.mark.quick  # trains nothing: part of the quick run
@pytest.mark.timeout(300)
def test_integration_tests_pass_on_a_patched_copy_in_native_mode(patched_copy, tmp_path):
    (tmp_path / "fair_native_guard.py").write_text(NATIVE_GUARD)
    files = [path for path, _ in NATIVE_SELECTION if (REPO / path).is_file()]
    selection = " or ".join(f"({k})" for _, k in NATIVE_SELECTION)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "fair_native_guard", "-p", "no:cacheprovider", "-rs",
         "-k", selection, *files],
        cwd=REPO, env={**os.environ, **native_env(patched_copy, tmp_path)}, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    passed = int(re.search(r"(\d+) passed", out).group(1))
    assert passed >= 3 + 2 * len(files) and " skipped" not in out.split("\n")[-2], out[-3000:]


def test_the_diffs_hooks_module_is_the_add_ons_runtime_registry(patched_copy):
    """One registry: the file the diff adds to OpenRLHF is byte for byte the one the runtime call sites read."""
    from openrlhf_fair.host import extension_hooks

    added = (patched_copy / "openrlhf/utils/extension_hooks.py").read_bytes()
    assert added == Path(extension_hooks.__file__).read_bytes()
