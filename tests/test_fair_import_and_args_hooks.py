"""The one owner of `hierarchize` (host.parsed_args) and the one import hook (host.import_hooks): the Liger
checklist (target replaced, twice harmless, nothing left when undone, a missing host symbol named)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import types

import pytest

from openrlhf_fair.host import parsed_args
from openrlhf_fair.errors import HostMismatchError
from openrlhf_fair.host.patching import is_patched


@pytest.fixture
def host_config():
    from openrlhf.utils import config

    plain = config.hierarchize
    yield config
    assert config.hierarchize is plain and list(parsed_args._hooks) == []


def test_parsed_args_hooks_run_in_order_on_the_hosts_result_and_undo_restores_it(host_config):
    seen = []
    undo_a = parsed_args.on_parsed_args("test.a", lambda args: seen.append(("a", args.train.batch_size)))
    undo_b = parsed_args.on_parsed_args("test.b", lambda args: seen.append(("b", args.seed)))
    assert is_patched(host_config, "hierarchize", parsed_args.PATCH_ID)
    nested = host_config.hierarchize(argparse.Namespace(**{"train.batch_size": 8, "seed": 3}))
    assert nested.train.batch_size == 8 and seen == [("a", 8), ("b", 3)]
    undo_a()
    assert list(parsed_args._hooks) == ["test.b"] and is_patched(host_config, "hierarchize")
    undo_b()
    assert not is_patched(host_config, "hierarchize")


def test_registering_a_hook_id_twice_replaces_it_and_undoing_twice_is_harmless(host_config):
    seen = []
    parsed_args.on_parsed_args("test.a", lambda args: seen.append("old"))
    undo = parsed_args.on_parsed_args("test.a", lambda args: seen.append("new"))
    host_config.hierarchize(argparse.Namespace(seed=1))
    assert seen == ["new"] and list(parsed_args._hooks) == ["test.a"]
    undo()
    undo()
    assert seen == ["new"]


def test_a_missing_hierarchize_is_named(monkeypatch):
    fake = types.ModuleType("openrlhf.utils.config")
    monkeypatch.setitem(sys.modules, "openrlhf.utils.config", fake)
    with pytest.raises(HostMismatchError, match=r"config\.hierarchize not found"):
        parsed_args.on_parsed_args("test.a", lambda args: None)
    assert list(parsed_args._hooks) == []


def run_fresh(code: str, tmp_path) -> str:
    """In a new interpreter, so this process's sys.meta_path stays as it is."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_when_imported_runs_after_the_module_executes_once_and_at_once_when_already_imported(tmp_path):
    (tmp_path / "fake_host.py").write_text("VALUE = 1\n")
    out = run_fresh(
        """
        import sys
        from openrlhf_fair.host import import_hooks
        seen = []
        import_hooks.when_imported("fake_host", lambda m: seen.append(m.VALUE))
        print("before", seen, "fake_host" in sys.modules)
        import fake_host
        import importlib; importlib.reload(fake_host)
        print("after", seen, type(fake_host.__loader__).__name__)
        import_hooks.when_imported("fake_host", lambda m: seen.append("again"))
        print("again", seen)
        """,
        tmp_path,
    )
    assert "before [] False" in out
    assert "after [1] SourceFileLoader" in out  # once, and the module keeps its real loader
    assert "again [1, 'again']" in out


def test_a_fallback_package_is_served_only_where_none_is_installed(tmp_path):
    for folder, marker in (("fallbacks", "FALLBACK"), ("installed", "REAL")):
        for name in ("pkg_missing", "pkg_present"):
            if folder == "installed" and name == "pkg_missing":
                continue
            (tmp_path / folder / name).mkdir(parents=True)
            (tmp_path / folder / name / "__init__.py").write_text(f"WHO = {marker!r}\n")
    out = run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "installed")!r})
        from pathlib import Path
        from openrlhf_fair.host import import_hooks
        for name in ("pkg_missing", "pkg_present"):
            import_hooks.serve_if_missing(name, Path({str(tmp_path / "fallbacks")!r}))
        import pkg_missing, pkg_present
        print(pkg_missing.WHO, pkg_present.WHO)
        import_hooks.stop_serving("pkg_missing")
        del sys.modules["pkg_missing"]
        try:
            import pkg_missing
        except ModuleNotFoundError:
            print("gone")
        """,
        tmp_path,
    )
    assert "FALLBACK REAL" in out and "gone" in out
