"""Which patches/ folder's native hook diff fits an OpenRLHF release (`host.patch_folders.hook_diff_folder`), at both
edges of every range of patches/README.md's table, written out by hand from that table."""

from __future__ import annotations

import pytest

from openrlhf_fair.host.patch_folders import hook_diff_folder

# patches/README.md: openrlhf-0.9.3/ 0.9.3 - 0.9.8; openrlhf-0.10.1/ 0.9.9 - 0.10.1.post2;
# openrlhf-0.11.1/ 0.10.2 - 0.11.1; openrlhf-0.11.2/ 0.11.2 and newer.
EDGES = [
    ("0.9.3", "openrlhf-0.9.3"),  # first supported release
    ("0.9.8", "openrlhf-0.9.3"),  # last of the first range
    ("0.9.9", "openrlhf-0.10.1"),  # first of the second
    ("0.9.10", "openrlhf-0.10.1"),  # numbers, not strings: 0.9.10 comes after 0.9.9, before 0.10.0
    ("0.10.0", "openrlhf-0.10.1"),
    ("0.10.1", "openrlhf-0.10.1"),
    ("0.10.1.post2", "openrlhf-0.10.1"),  # post releases belong to their release
    ("0.10.2", "openrlhf-0.11.1"),  # first nested-args release
    ("0.10.2.dev0", "openrlhf-0.11.1"),
    ("0.11.0", "openrlhf-0.11.1"),
    ("0.11", "openrlhf-0.11.1"),  # two parts: 0.11.0
    ("0.11.1", "openrlhf-0.11.1"),  # last of the third range
    ("0.11.2", "openrlhf-0.11.2"),  # first of the last
    ("0.11.2rc1", "openrlhf-0.11.2"),
    ("0.11.10", "openrlhf-0.11.2"),
    ("0.12.0", "openrlhf-0.11.2"),  # newer releases: the newest folder
    ("1.0.0", "openrlhf-0.11.2"),
]


@pytest.mark.parametrize("version, folder", EDGES)
def test_edges_of_each_range(version, folder):
    assert hook_diff_folder(version) == folder


@pytest.mark.parametrize("version", [None, "", "main", "unknown"])
def test_an_unknown_version_gets_the_newest_folder(version):
    assert hook_diff_folder(version) == "openrlhf-0.11.2"


def test_every_supported_release():
    """The 18 releases the installer knows, each with the folder the README's table gives it."""
    expected = {
        "0.9.3": "0.9.3", "0.9.4": "0.9.3", "0.9.5": "0.9.3", "0.9.6": "0.9.3", "0.9.7": "0.9.3", "0.9.8": "0.9.3",
        "0.9.9": "0.10.1", "0.9.10": "0.10.1", "0.10.0": "0.10.1", "0.10.1": "0.10.1", "0.10.1.post1": "0.10.1",
        "0.10.1.post2": "0.10.1", "0.10.2": "0.11.1", "0.10.3": "0.11.1", "0.10.4": "0.11.1", "0.11.0": "0.11.1",
        "0.11.1": "0.11.1", "0.11.2": "0.11.2",
    }
    from openrlhf_fair.host.releases import OPENRLHF_RELEASES

    assert set(OPENRLHF_RELEASES) == set(expected)
    assert {v: hook_diff_folder(v) for v in expected} == {v: f"openrlhf-{f}" for v, f in expected.items()}


def test_release_tuple():
    from openrlhf_fair.host.patch_folders import release_tuple

    assert release_tuple("0.11") == (0, 11, 0)  # a missing patch number is 0
    assert release_tuple("0.10.1.post2") == (0, 10, 1) and release_tuple("1.2.3rc1") == (1, 2, 3)
    assert release_tuple("main") is None and release_tuple("v0.9.3") is None
