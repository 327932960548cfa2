"""Which patches/ folder's native hook diff fits an OpenRLHF release (the README of patches/ has the same table).

Each folder holds ``extension-hooks.diff`` for a range of releases whose hooked files share the diff's context
(each checked against every release's wheel, exact context); the newest folder also serves newer releases and a
version that cannot be read. Stdlib only; nothing of OpenRLHF is imported.
"""

from __future__ import annotations

import re

HOOK_DIFF_FOLDERS = (  # (first release, last release, folder)
    ((0, 9, 3), (0, 9, 8), "openrlhf-0.9.3"),  # flat; SamplesGenerator/Experience in experience_maker.py
    ((0, 9, 9), (0, 10, 1), "openrlhf-0.10.1"),  # flat; experience.py / samples_generator.py
    ((0, 10, 2), (0, 11, 1), "openrlhf-0.11.1"),  # nested; eval accuracy averaged over batches
    ((0, 11, 2), None, "openrlhf-0.11.2"),  # nested; eval accuracy weighted by sample
)


def release_tuple(version: str) -> tuple[int, ...] | None:
    """(major, minor, patch) of a version string ("0.10.1.post2" -> (0, 10, 1), "0.11" -> (0, 11, 0)); None when
    it does not start with numbers."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(part or 0) for part in match.groups()) if match else None


def hook_diff_folder(version: str | None) -> str:
    """The patches/ folder whose native hook diff fits OpenRLHF ``version`` (the newest one when unknown)."""
    release = release_tuple(version) if version else None
    for first, last, folder in HOOK_DIFF_FOLDERS:
        if release is not None and first <= release and (last is None or release <= last):
            return folder
    return HOOK_DIFF_FOLDERS[-1][2]
