"""`host.compat`: the installed OpenRLHF's family by feature detection, the refusal outside the supported range, and
the one accessor for host arguments (nested names read on flat and nested args alike, flags in the installed
spelling). Fake OpenRLHF trees stand in for releases that are not installed; the checks against the installed
release's own CLI files run in every matrix environment (host_matrix)."""

from __future__ import annotations

import argparse
import importlib.machinery
from pathlib import Path
from types import SimpleNamespace

import pytest

from openrlhf_fair.host import compat
from openrlhf_fair.host.patch_folders import release_tuple

REPO = Path(__file__).resolve().parents[1]


def fake_openrlhf(root: Path, *, nested: bool, flat: bool = False, generator: str | None = "samples_generator",
                  process: bool = True) -> Path:
    """A tree holding only what `require_family` reads: utils/config.py, cli/train_rm.py, trainer/ppo_utils/*."""
    package = root / "openrlhf"
    (package / "utils").mkdir(parents=True)
    (package / "cli").mkdir()
    (package / "trainer" / "ppo_utils").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if nested:
        (package / "utils" / "config.py").write_text("def hierarchize(args):\n    return args\n")
    train_rm = 'parser.add_argument("--micro_train_batch_size", type=int, default=1)\n' if flat else ""
    (package / "cli" / "train_rm.py").write_text(train_rm)
    if generator is not None:
        body = "class SamplesGenerator:\n" + ("    def _process_response_into_experience(self):\n        pass\n"
                                                if process else "    pass\n")
        (package / "trainer" / "ppo_utils" / f"{generator}.py").write_text(body)
    return package


@pytest.fixture
def installed(monkeypatch):
    """Make `require_family` see a fake tree at ``package`` with ``version``; the cache is cleared around it."""

    def install(package: Path, version: str | None):
        spec = importlib.machinery.ModuleSpec("openrlhf", None, is_package=True)
        spec.submodule_search_locations = [str(package)]
        monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: spec if name == "openrlhf" else None)
        monkeypatch.setattr(compat, "installed_openrlhf_version", lambda: version)
        compat.require_family.cache_clear()
        compat._cli_text.cache_clear()

    yield install
    compat.require_family.cache_clear()
    compat._cli_text.cache_clear()


def family(name: str, tmp_path: Path) -> compat.Family:
    module = "openrlhf.trainer.ppo_utils.samples_generator"
    return compat.Family(name, "x", module, "0.0.0", tmp_path)


@pytest.fixture
def as_family(monkeypatch, tmp_path):
    """Pretend the installed release is of family ``name`` (flat names with alternatives use the first one)."""

    def use(name: str):
        monkeypatch.setattr(compat, "require_family", lambda: family(name, tmp_path))
        monkeypatch.setattr(compat, "_cli_text", lambda command=None: "")

    return use


# --------------------------------------------------------------------------------------------- detection
def test_nested_flat_and_the_samples_generator_module_are_detected(tmp_path, installed):
    installed(fake_openrlhf(tmp_path / "a", nested=True), "0.11.2")
    found = compat.require_family()
    assert found.nested and found.parsed_args_hook == ("openrlhf.utils.config", "hierarchize")
    assert found.samples_generator_module == "openrlhf.trainer.ppo_utils.samples_generator"

    installed(fake_openrlhf(tmp_path / "b", nested=False, flat=True, generator="experience_maker"), "0.9.3")
    found = compat.require_family()
    assert found.name == "flat" and found.parsed_args_hook == ("openrlhf.utils", "get_strategy")
    assert found.samples_generator_module == "openrlhf.trainer.ppo_utils.experience_maker"
    assert "OpenRLHF 0.9.3 (flat args, 0.9.3-0.10.1 family)" in compat.describe_host()


@pytest.mark.parametrize(
    "version, tree, why",
    [
        ("0.9.2", dict(nested=False, flat=True), "older than 0.9.3"),
        ("0.8.11", dict(nested=False, flat=True), "older than 0.9.3"),
        ("0.9.1", dict(nested=False, flat=True, process=False), "older than 0.9.3"),
        (None, dict(nested=False, flat=True, process=False), "no SamplesGenerator._process_response_into_experience"),
        ("0.12.0", dict(nested=False, flat=False), "neither openrlhf/utils/config.py:hierarchize"),
        ("0.12.0", dict(nested=True, generator=None), "no SamplesGenerator._process_response_into_experience"),
    ],
)
def test_outside_the_range_or_an_unknown_structure_is_refused_naming_version_and_range(
        tmp_path, installed, version, tree, why):
    installed(fake_openrlhf(tmp_path, **tree), version)
    with pytest.raises(compat.UnsupportedHostError) as error:
        compat.require_family()
    message = str(error.value)
    assert why in message and f"OpenRLHF {version or '(version unknown)'}" in message
    assert compat.SUPPORTED_RANGE in message and "openrlhf_fair.install --openrlhf" in message
    assert compat.installed_family() is None and compat.describe_host() == message.removeprefix("openrlhf-fair: ")


def test_a_newer_release_with_a_known_structure_is_accepted(tmp_path, installed):
    installed(fake_openrlhf(tmp_path, nested=True), "0.12.1")  # feature detection, not a version list
    assert compat.require_family().nested


def test_no_openrlhf_is_refused(monkeypatch):
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: None)
    compat.require_family.cache_clear()
    try:
        with pytest.raises(compat.UnsupportedHostError, match="OpenRLHF is not installed"):
            compat.require_family()
    finally:
        compat.require_family.cache_clear()


def test_the_cli_refuses_an_unsupported_host_with_one_message(tmp_path, installed, capsys):
    from openrlhf_fair.cli.runner import run_host_cli

    installed(fake_openrlhf(tmp_path, nested=False, flat=True), "0.9.2")
    assert run_host_cli("train_rm", ["--fairness_reg", "0.1"], cpu=False) == 2
    err = capsys.readouterr().err
    assert "OpenRLHF 0.9.2" in err and compat.SUPPORTED_RANGE in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- the accessor
def test_host_arg_reads_and_sets_nested_args(as_family):
    as_family("nested")
    args = SimpleNamespace(train=SimpleNamespace(micro_batch_size=8), ds=SimpleNamespace(ring_attn_size=None))
    assert compat.host_arg(args, "train.micro_batch_size") == 8
    assert compat.host_arg(args, "ds.ring_attn_size", 1) == 1  # None -> default
    assert compat.host_arg(args, "vllm.num_engines", "absent") == "absent"
    compat.set_host_arg(args, "train.micro_batch_size", 4)
    assert args.train.micro_batch_size == 4
    assert compat.host_flag("train.micro_batch_size") == "--train.micro_batch_size"
    assert compat.in_host_spelling("raise --train.micro_batch_size") == "raise --train.micro_batch_size"
    assert compat.host_argv(["--data.max_len=64", "--x.y", "1"]) == ["--data.max_len=64", "--x.y", "1"]


def test_host_arg_reads_and_sets_flat_args_by_their_flat_names(as_family):
    as_family("flat")
    args = argparse.Namespace(micro_train_batch_size=8, pretrain="m", vllm_sync_backend="nccl", ring_attn_size=1)
    assert compat.host_arg(args, "train.micro_batch_size") == 8
    assert compat.host_arg(args, "model.model_name_or_path") == "m"
    assert compat.host_arg(args, "data.max_images_per_prompt", 0) == 0  # not in this release: default
    compat.set_host_arg(args, "vllm.sync_backend", "gloo")
    assert args.vllm_sync_backend == "gloo"
    assert compat.host_flag("train.micro_batch_size") == "--micro_train_batch_size"
    assert compat.host_flag("logger.tensorboard_dir") == "--use_tensorboard"
    with pytest.raises(KeyError, match="FLAT_NAMES"):
        compat.host_arg(args, "no.such_arg")


def test_messages_and_command_lines_are_spelled_for_a_flat_release(as_family):
    as_family("flat")
    message = ("(--train.micro_batch_size 1; OpenRLHF's default is 1) --data.max_len 64, --eval.dataset FILE, "
               "--fairness_reg stays, --model.unknown_flag stays, openrlhf_fair.host.compat stays")
    assert compat.in_host_spelling(message) == (
        "(--micro_train_batch_size 1; OpenRLHF's default is 1) --max_len 64, --eval_dataset FILE, "
        "--fairness_reg stays, --model.unknown_flag stays, openrlhf_fair.host.compat stays")
    argv = ["--model.model_name_or_path", "tiny", "--train.batch_size=16", "--fairness_reg", "0.1", "--local_rank", "0"]
    assert compat.host_argv(argv) == ["--pretrain", "tiny", "--train_batch_size=16", "--fairness_reg", "0.1",
                                      "--local_rank", "0"]


def test_host_args_like_builds_the_installed_layout(as_family):
    as_family("nested")
    nested = compat.host_args_like({"data.prompt_key": "p", "data.chosen_key": "c", "train.seed": 1})
    assert nested.data.prompt_key == "p" and nested.data.chosen_key == "c" and nested.train.seed == 1
    as_family("flat")
    flat = compat.host_args_like({"data.prompt_key": "p", "model.margin_loss_enable": True})
    assert vars(flat) == {"prompt_key": "p", "margin_loss": True}


def test_a_flat_host_flag_that_looks_like_an_addon_typo_passes(monkeypatch):
    from openrlhf_fair.cli import flags

    monkeypatch.setattr(compat, "is_host_flag", lambda command, flag: flag in ("--temperature", "--eval_temperature"))
    config, rest = flags.parse_fairness_args("train_ppo_ray", ["--temperature", "0.7", "--fair_coef", "0.5"])
    assert rest == ["--temperature", "0.7"] and config.coef == 0.5
    with pytest.raises(SystemExit):
        flags.parse_fairness_args("train_ppo_ray", ["--fair_temperatur", "0.7"])  # a real near miss still is one


def test_the_flat_parsed_args_hook_runs_before_get_strategy():
    from openrlhf_fair.host import parsed_args

    seen = []
    parsed_args._hooks["test.flat"] = lambda args: seen.append(("hook", args.seed))
    try:
        get_strategy = parsed_args._wrap_get_strategy(lambda args: seen.append(("host", args.seed)) or "strategy")
        assert get_strategy(argparse.Namespace(seed=3)) == "strategy"
    finally:
        del parsed_args._hooks["test.flat"]
    assert seen == [("hook", 3), ("host", 3)]


def test_the_flat_cpu_optimizer_is_torch_adamw_with_the_hosts_arguments():
    import torch

    from openrlhf_fair.cpu_backend.strategy import _torch_adamw

    params = [torch.nn.Parameter(torch.ones(2))]
    optim = _torch_adamw(None)(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)  # what create_optimizer passes
    assert type(optim) is torch.optim.AdamW
    group = optim.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["eps"]) == (1e-3, (0.9, 0.95), 0.1, 1e-8)


# --------------------------------------------------------------------------------------------- the installed release
@pytest.mark.host_matrix
def test_the_installed_release_is_detected_and_every_flat_name_matches_its_cli_files():
    """On the installed OpenRLHF (the default env's 0.11.2, or a matrix env's flat release): the family fits its
    version, and every host argument the add-on names exists in its CLI files in the spelling `host_flag` gives."""
    found = compat.require_family()
    release = release_tuple(found.version)
    assert found.nested == (release >= (0, 10, 2)), found
    text = compat._cli_text()
    missing = []
    for dotted, flat in compat.FLAT_NAMES.items():
        flag = compat.host_flag(dotted)
        optional = dotted == "data.max_images_per_prompt" and release < (0, 10, 0)  # multimodal came in 0.10.0
        per_model = found.nested and f'"--{{prefix}}.{dotted.split(".", 1)[1]}"' in text  # f"--{prefix}.adam.lr"
        if f'"{flag}"' not in text and not (optional or per_model):
            missing.append(f"{dotted} -> {flag}")
    assert not missing, f"not in {found.describe()}'s train_rm/train_dpo/train_ppo_ray: {missing}"


def test_a_served_stand_in_is_named_in_transformers_distribution_map_and_removed_with_it(monkeypatch):
    """transformers 5.3 - 5.7 index ``PACKAGE_DISTRIBUTION_MAPPING["flash_attn"]`` for any findable flash_attn (a
    KeyError for the stand-in); while the stand-in serves, the map names a distribution that does not exist."""
    import sys
    import types

    from openrlhf_fair.cpu_backend import stand_ins
    from openrlhf_fair.host import import_hooks

    fake = types.ModuleType(stand_ins.TRANSFORMERS_IMPORT_UTILS)
    fake.PACKAGE_DISTRIBUTION_MAPPING = {"torch": ["torch"]}
    monkeypatch.setitem(sys.modules, stand_ins.TRANSFORMERS_IMPORT_UTILS, fake)
    was_served = import_hooks.serves("flash_attn")
    monkeypatch.setattr(stand_ins.importlib.util, "find_spec", lambda name: None)  # as on a machine without it
    stand_ins.uninstall("flash_attn")
    try:
        assert stand_ins.install("flash_attn")
        assert fake.PACKAGE_DISTRIBUTION_MAPPING["flash_attn"] == [stand_ins.STAND_IN_DISTRIBUTION]
        stand_ins.uninstall("flash_attn")
        assert fake.PACKAGE_DISTRIBUTION_MAPPING == {"torch": ["torch"]}
    finally:
        if was_served:
            stand_ins.install("flash_attn")


def test_addon_flag_errors_and_cpu_backend_refusals_name_flat_flags(as_family, capsys):
    """A message written with nested names reaches the user in the installed release's spelling."""
    from openrlhf_fair.cli import flags
    from openrlhf_fair.cpu_backend import cli_args

    as_family("flat")
    with pytest.raises(SystemExit):
        flags._Parser(prog="openrlhf train_rm").error("needs --train.micro_batch_size >= 2")
    assert "needs --micro_train_batch_size >= 2" in capsys.readouterr().err
    with pytest.raises(cli_args.UnsupportedOnCpu) as error:
        cli_args.check_args(argparse.Namespace(packing_samples=True, ring_attn_size=1, load_in_4bit=False,
                                               ds_tensor_parallel_size=1, param_dtype="bf16"))
    assert "--packing_samples True" in str(error.value) and "--ds." not in str(error.value)


def test_version_line_names_family_range_and_the_releases_ci_tests(tmp_path, installed, monkeypatch):
    from openrlhf_fair.host import releases

    monkeypatch.setattr(releases, "CI_MATRIX", ("0.9.3",))
    installed(fake_openrlhf(tmp_path, nested=False, flat=True, generator="experience_maker"), "0.9.3")
    line = compat.describe_host()
    assert line.startswith("OpenRLHF 0.9.3 (flat args, 0.9.3-0.10.1 family); supported: 0.9.3 through 0.11.x")
    assert line.endswith(f"tested: {releases.DEFAULT_OPENRLHF} (whole suite), 0.9.3 (end-to-end runs)")


def test_shell_scripts_get_the_host_spelling_one_token_per_line(tmp_path):
    """`python -m openrlhf_fair.host.compat ARGS...` (examples/fair_rm_cpu_demo.sh) prints host_argv(ARGS), one
    token per line, so that a path with spaces stays one token; on this nested release the flags are unchanged."""
    import subprocess
    import sys

    args = ["--model.model_name_or_path", str(tmp_path / "a model"), "--train.micro_batch_size", "16", "--fairness_reg", "1"]
    script = 'SPELLED=$("$0" -m openrlhf_fair.host.compat "$@"); mapfile -t OUT <<< "$SPELLED"; printf "<%s>" "${OUT[@]}"'
    result = subprocess.run(["bash", "-c", script, sys.executable, *args], capture_output=True, text=True, check=True)
    assert result.stdout == "".join(f"<{token}>" for token in compat.host_argv(args))
    assert compat.host_argv(args) == args  # nested family: identity
