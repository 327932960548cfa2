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

from openrlhf_fair.host.version import SUPPORTED_OPENRLHF, installed_openrlhf_version

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
    """The diffs for ``version``: its own folder, else the newest older one (whose staleness is then checked)."""
    folders = sorted(
        (tuple(int(part) for part in path.name.split("-", 1)[1].split(".")), path)
        for path in PATCHES.glob("openrlhf-*")
        if path.is_dir()
    )
    wanted = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    older = [path for key, path in folders if key <= wanted]
    assert older, f"patches/ has no diff folder for OpenRLHF {version} or older"
    return sorted(older[-1].glob("*.diff"))


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
    for version in SUPPORTED_OPENRLHF:
        assert (PATCHES / f"openrlhf-{version}" / HOOK_DIFF).is_file(), f"patches/openrlhf-{version}/{HOOK_DIFF}"
    assert (PATCHES / "README.md").is_file()


def test_every_diff_applies_to_the_installed_openrlhf(pristine_copy):
    version = installed_openrlhf_version()
    diffs = diffs_for(version)
    assert diffs
    problems = [problem for diff in diffs for problem in stale_hunks(diff, pristine_copy)]
    assert not problems, f"stale diff for the installed OpenRLHF {version}:\n" + "\n".join(problems)
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
    diff = PATCHES / "openrlhf-0.11.2" / HOOK_DIFF
    hunks = {file.path: file.hunks for file in parse_diff(diff.read_text(encoding="utf-8"))}
    logs_hunk = next(i for i, h in enumerate(hunks["openrlhf/trainer/rm_trainer.py"], 1) if h.startswith("@@ -18"))

    problems = stale_hunks(diff, root)

    assert len(problems) == 1, problems
    assert "openrlhf/trainer/rm_trainer.py" in problems[0]
    assert f"hunk #{logs_hunk} `@@ -18" in problems[0]

    (root / "openrlhf/trainer/dpo_trainer.py").unlink()
    problems = stale_hunks(diff, root)
    assert problems == [f"{HOOK_DIFF}: openrlhf/trainer/dpo_trainer.py is missing (all 3 hunks stale)"]


def test_diff_adds_no_hook_calls_beyond_the_documented_points():
    """The diff stays small: one new module and one call per documented hook point."""
    files = parse_diff((PATCHES / "openrlhf-0.11.2" / HOOK_DIFF).read_text(encoding="utf-8"))
    assert {f.path for f in files} == {
        "openrlhf/utils/extension_hooks.py",
        "openrlhf/trainer/rm_trainer.py",
        "openrlhf/trainer/dpo_trainer.py",
        "openrlhf/trainer/ppo_utils/experience_maker.py",
    }
    assert [f.path for f in files if f.new_file] == ["openrlhf/utils/extension_hooks.py"]


# ── The patched copy: hooks are no-ops by default and the add-on prefers them ──


def run_on(site: Path, code: str, mode: str = "native", timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose ``openrlhf`` is the copy under ``site``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
    env["OPENRLHF_FAIR_PATCH_MODE"] = mode
    env.setdefault("TORCHDYNAMO_DISABLE", "1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_hooks_module_is_a_no_op_until_registered(patched_copy):
    result = run_on(
        patched_copy,
        """
        import openrlhf.utils.extension_hooks as hooks
        assert hooks.__file__.startswith(%r), hooks.__file__
        loss, experiences = object(), [1, 2]
        assert hooks.apply_loss_hooks("trainer", loss) is loss
        assert hooks.apply_experience_hooks("maker", experiences) is experiences
        assert hooks.get_loss_logs(loss) == {}

        class Logged:
            def extra_logs(self):
                return {"fairness": 0.5}

        wrap = lambda trainer, loss_fn: Logged()
        remove = hooks.register_loss_hook(wrap)
        hooks.register_loss_hook(wrap)  # twice is harmless
        hooked = hooks.apply_loss_hooks("trainer", loss)
        assert isinstance(hooked, Logged) and hooks.get_loss_logs(hooked) == {"fairness": 0.5}
        remove()
        assert hooks.apply_loss_hooks("trainer", loss) is loss
        remove_exp = hooks.register_experience_hook(lambda maker, exps: exps[::-1])
        assert hooks.apply_experience_hooks("maker", [1, 2]) == [2, 1]
        remove_exp()
        assert hooks.apply_experience_hooks("maker", [1, 2]) == [1, 2]
        try:
            hooks.register_loss_hook("not callable")
        except TypeError:
            pass
        else:
            raise AssertionError("a non-callable hook was accepted")
        print("OK")
        """
        % str(patched_copy),
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
