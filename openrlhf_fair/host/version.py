"""All checks of the installed OpenRLHF live here (the PEFT pattern).

OpenRLHF has no ``__version__`` and ships as ``openrlhf`` or ``openrlhf-nightly``; its 0.11.1 -> 0.11.2 patch
release already renamed flags. So patches check the structure they need (`patching.require_attribute`)
and this module only tells which distribution and version is installed, for messages and for the
supported-versions list.
"""

from __future__ import annotations

from importlib import metadata

SUPPORTED_OPENRLHF = ("0.11.2",)
DISTRIBUTIONS = ("openrlhf", "openrlhf-nightly")


def installed_openrlhf_version() -> str | None:
    for dist in DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def describe_host() -> str:
    version = installed_openrlhf_version()
    if version is None:
        return "OpenRLHF is not installed (run `python3 -m openrlhf_fair.install`)"
    support = "supported" if version in SUPPORTED_OPENRLHF else f"untested; supported: {', '.join(SUPPORTED_OPENRLHF)}"
    return f"OpenRLHF {version} ({support})"
