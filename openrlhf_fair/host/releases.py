"""The OpenRLHF releases the add-on supports, installs by default and tests in CI (standard library only: the
installer reads them before anything else is installed)."""

from __future__ import annotations

# Every OpenRLHF release on PyPI the add-on supports, oldest first. 0.9.3 is the first with
# `_process_response_into_experience` (PPO's label:KEY needs it); families: 0.9.3-0.10.1 flat args,
# 0.10.2-0.11.x nested args (openrlhf_fair/host/ tells them apart by structure, not by this list).
OPENRLHF_RELEASES = (
    "0.9.3", "0.9.4", "0.9.5", "0.9.6", "0.9.7", "0.9.8", "0.9.9", "0.9.10",
    "0.10.0", "0.10.1", "0.10.1.post1", "0.10.1.post2", "0.10.2", "0.10.3", "0.10.4",
    "0.11.0", "0.11.1", "0.11.2",
)
DEFAULT_OPENRLHF = OPENRLHF_RELEASES[-1]  # .ci/run: the whole suite
# .ci/run's version matrix: the tests marked host_matrix on each of these too, each in its own environment
# (a release joins once they pass there).
CI_MATRIX: tuple[str, ...] = ("0.10.4", "0.9.3")  # one 0.10.x nested-args release, the oldest flat-args one
SUPPORTED_RANGE = f"{OPENRLHF_RELEASES[0]} to {OPENRLHF_RELEASES[-1]}"
