"""The installer (`python3 -m openrlhf_fair.install`): which OpenRLHF release and which of its pins it installs,
refusals, and that the environment running these tests is what it promises (the release's pins, no pynvml shim)."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys

import pytest

from openrlhf_fair import install

# Requires-Dist of the openrlhf 0.9.3 and 0.11.2 wheels on PyPI (from `pip download --no-deps openrlhf==X`).
DECLARED_0_9_3 = [
    "accelerate", "aiohttp", "bitsandbytes", "datasets", "deepspeed==0.18.5", "einops", "flash-attn==2.8.3",
    "grpcio>=1.74.0", "isort", "jsonlines", "loralib", "optimum", "optree>=0.15.0", "packaging", "peft",
    "pylatexenc", "pynvml>=12.0.0", "ray[default]==2.48.0", "sympy", "tensorboard", "torch", "torchdata",
    "torchmetrics", "tqdm", "transformers==4.57.6", "transformers-stream-generator", "wandb", "wheel",
    'liger-kernel; extra == "liger"', 'ring-flash-attn; extra == "ring"', 'vllm==0.15.0; extra == "vllm"',
    'vllm>0.15.0; extra == "vllm-latest"',
]


def test_host_requirements_keep_the_release_pins_and_drop_optional_and_cuda_only_packages():
    everywhere, cuda = install.host_requirements(DECLARED_0_9_3)
    assert "deepspeed==0.18.5" in everywhere and "ray[default]==2.48.0" in everywhere
    assert "transformers==4.57.6" in everywhere and "grpcio>=1.74.0" in everywhere
    names = {install.distribution_name(r) for r in everywhere}
    assert not names & {"bitsandbytes", "wandb", "optimum", "isort", "transformers-stream-generator", "flash-attn",
                        "vllm", "liger-kernel", "ring-flash-attn", "pynvml"}
    assert "nvidia-ml-py>=12.0.0" in everywhere  # the same `pynvml` module, without the shim's FutureWarning
    assert "pillow" in everywhere  # imported by openrlhf.utils.vlm_utils, not declared
    assert cuda == ["flash-attn==2.8.3", "vllm==0.15.0"]  # the `vllm` extra's pin, not `vllm-latest`


@pytest.mark.parametrize("requirement, name", [
    ("ray[default]==2.55.0", "ray"), ("Foo_Bar.baz>=1", "foo-bar-baz"), ("torch", "torch"),
    ("nvidia-ml-py >= 12", "nvidia-ml-py"),
])
def test_distribution_name(requirement, name):
    assert install.distribution_name(requirement) == name


def test_supported_releases_run_from_the_oldest_to_the_default():
    assert install.OPENRLHF_RELEASES[0] == "0.9.3" and install.DEFAULT_OPENRLHF == install.OPENRLHF_RELEASES[-1]
    key = [tuple(int(n) for n in re.findall(r"\d+", v)) for v in install.OPENRLHF_RELEASES]
    assert key == sorted(key) and len(set(key)) == len(key)


def test_the_ci_matrix_names_other_supported_releases():
    assert set(install.CI_MATRIX) <= set(install.OPENRLHF_RELEASES) - {install.DEFAULT_OPENRLHF}
    assert len(set(install.CI_MATRIX)) == len(install.CI_MATRIX)


def test_an_installed_openrlhf_is_kept_unless_another_release_is_asked_for(capsys):
    assert install.release_to_install(None, None) == install.DEFAULT_OPENRLHF
    assert install.release_to_install(None, "0.10.4") is None
    assert install.release_to_install(None, "0.12.0.dev0") is None
    assert "untested: the add-on supports 0.9.3 to" in capsys.readouterr().out
    assert install.release_to_install("0.10.4", "0.10.4") is None
    assert install.release_to_install("0.9.3", "0.11.2") == "0.9.3"
    assert install.release_to_install("0.10.4", None) == "0.10.4"


@pytest.mark.parametrize("version", ["0.9.2", "0.8.11", "0.11.3", "0.12.0", "latest"])
def test_an_unsupported_release_is_refused_before_anything_is_created(tmp_path, version):
    target = tmp_path / "venv"
    result = subprocess.run([sys.executable, "-m", "openrlhf_fair.install", "--openrlhf", version,
                             "--venv", str(target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--openrlhf {version}: not a supported OpenRLHF release; supported: 0.9.3 to 0.11.2" in result.stderr
    assert "Traceback" not in result.stderr and not target.exists()


def test_this_environment_has_the_installed_release_pins():
    """What the installer put here: every `==` pin the installed OpenRLHF declares (pynvml replaced)."""
    everywhere, _ = install.host_requirements(metadata.requires("openrlhf"))
    pins = [r.split("==") for r in everywhere if "==" in r]
    assert pins, everywhere
    for name, version in pins:
        assert metadata.version(install.distribution_name(name)) == version, name


def test_no_pynvml_shim_so_importing_torch_warns_nothing():
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("pynvml")
    assert metadata.version("nvidia-ml-py")
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", "import pynvml, torch.cuda"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
