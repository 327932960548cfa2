"""The one place that knows how OpenRLHF releases differ: which family is installed, and its host arguments.

Chosen by feature detection on the installed package's files (nothing of OpenRLHF is imported here), never by
version strings alone (a source checkout of main carries whatever version its setup says):

| family | releases | args and flags | parsed-args hook point | SamplesGenerator lives in | CPU optimizer |
|---|---|---|---|---|---|
| nested | 0.10.2 - 0.11.x | dotted flags, nested args (`openrlhf/utils/config.py:hierarchize`) | ``hierarchize`` | samples_generator.py | DeepSpeed config (``torch_adam``) |
| flat | 0.9.3 - 0.10.1 | flat flags, flat ``argparse.Namespace`` (``--micro_train_batch_size``) | ``openrlhf.utils.get_strategy`` (every CLI's first call in ``train(args)``) | samples_generator.py from 0.9.9, experience_maker.py in 0.9.3 - 0.9.8 | ``create_optimizer``'s FusedAdam / DeepSpeedCPUAdam |

A release below 0.9.3 (0.9.0 and older lack ``SamplesGenerator._process_response_into_experience``; 0.9.2 has it
but is untested), or a structure that matches no family, is refused (`require_family`) naming the installed
version and the supported range.

Host arguments are read through one accessor that knows both layouts: the add-on names every host argument by its
nested (0.10.2+) dotted name, and `host_arg(args, "train.micro_batch_size")` reads ``args.train.micro_batch_size``
on a nested release and ``args.micro_train_batch_size`` on a flat one (`FLAT_NAMES`, checked against the released
CLI files by tests). `host_flag` spells a flag as the installed release does, and `in_host_spelling` rewrites every
``--dotted.flag`` of a message into that spelling, so error messages name flags the user can type.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from openrlhf_fair.errors import HostMismatchError, UnsupportedHostError
from openrlhf_fair.host import releases
from openrlhf_fair.host.patch_folders import release_tuple

DISTRIBUTIONS = ("openrlhf", "openrlhf-nightly")
OLDEST_SUPPORTED = (0, 9, 3)
SUPPORTED_RANGE = "0.9.3 through 0.11.x (and a source install of OpenRLHF's main branch)"
PARSED_ARGS_HOOK = {"nested": ("openrlhf.utils.config", "hierarchize"), "flat": ("openrlhf.utils", "get_strategy")}

# Nested (0.10.2+) dotted name -> the flat (0.9.3 - 0.10.1) argument; a tuple lists alternatives, newest first,
# for a flag renamed inside the flat family (the installed CLI files decide which one a release has).
FLAT_NAMES: dict[str, str | tuple[str, ...]] = {
    "train.micro_batch_size": "micro_train_batch_size", "train.batch_size": "train_batch_size",
    "train.max_epochs": "max_epochs", "train.seed": "seed", "train.colocate_all": "colocate_all_models",
    "train.num_episodes": "num_episodes", "train.async_enable": "async_train",
    "ds.zero_stage": "zero_stage", "ds.param_dtype": "param_dtype", "ds.attn_implementation": "attn_implementation",
    "ds.packing_samples": "packing_samples", "ds.ring_attn_size": "ring_attn_size",
    "ds.tensor_parallel_size": "ds_tensor_parallel_size", "ds.load_in_4bit": "load_in_4bit",
    "data.dataset": "dataset", "data.dataset_probs": "dataset_probs", "data.dataset_split": "dataset_split",
    "data.max_samples": "max_samples", "data.max_len": "max_len", "data.prompt_key": "prompt_key",
    "data.chosen_key": "chosen_key", "data.rejected_key": "rejected_key", "data.input_template": "input_template",
    "data.apply_chat_template": "apply_chat_template", "data.tokenizer_chat_template": "tokenizer_chat_template",
    "data.disable_fast_tokenizer": "disable_fast_tokenizer", "data.prompt_dataset": "prompt_data",
    "data.input_key": "input_key", "data.label_key": "label_key", "data.max_images_per_prompt": "max_images_per_prompt",
    "eval.dataset": "eval_dataset", "eval.split": "eval_split", "eval.steps": "eval_steps",
    "model.model_name_or_path": "pretrain", "model.margin_loss_enable": "margin_loss", "model.loss_type": "loss",
    "model.beta": "beta", "adam.lr": "learning_rate", "adam.betas": "adam_betas",
    "actor.model_name_or_path": "pretrain", "actor.num_gpus_per_node": "actor_num_gpus_per_node",
    "actor.adam.lr": "actor_learning_rate", "critic.adam.lr": "critic_learning_rate",
    "actor.lr_warmup_ratio": "lr_warmup_ratio",
    "critic.model_name_or_path": "critic_pretrain", "critic.num_gpus_per_node": "critic_num_gpus_per_node",
    "ref.num_gpus_per_node": "ref_num_gpus_per_node", "reward.num_gpus_per_node": "reward_num_gpus_per_node",
    "reward.model_name_or_path": "reward_pretrain", "reward.remote_url": "remote_rm_url",
    "reward.normalize_enable": "normalize_reward", "rollout.n_samples_per_prompt": "n_samples_per_prompt",
    "rollout.micro_batch_size": "micro_rollout_batch_size", "rollout.batch_size": "rollout_batch_size",
    "rollout.max_new_tokens": ("max_new_tokens", "generate_max_len"),
    "algo.advantage.estimator": "advantage_estimator", "algo.kl.init_coef": "init_kl_coef",
    "vllm.num_engines": "vllm_num_engines", "vllm.tensor_parallel_size": "vllm_tensor_parallel_size",
    "vllm.sync_backend": "vllm_sync_backend", "vllm.sync_with_ray": "vllm_sync_with_ray",
    "vllm.enable_sleep": "vllm_enable_sleep",
    "ckpt.output_dir": "save_path", "ckpt.path": "ckpt_path", "ckpt.save_steps": "save_steps",
    "ckpt.load_enable": "load_checkpoint",
    "logger.logging_steps": "logging_steps", "logger.tensorboard_dir": "use_tensorboard",
    "logger.wandb.run_name": "wandb_run_name",
}
HOST_CLIS = ("train_rm", "train_dpo", "train_ppo_ray")
_DOTTED_FLAG = re.compile(r"--([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)")


@dataclass(frozen=True)
class Family:
    """What the add-on needs to know about one family of OpenRLHF releases (see the module doc)."""

    name: str  # "nested" or "flat"
    releases: str
    samples_generator_module: str  # where SamplesGenerator (and Experience) live
    version: str | None
    root: Path

    @property
    def nested(self) -> bool:
        return self.name == "nested"

    @property
    def parsed_args_hook(self) -> tuple[str, str]:
        """(module, function) of the host call that every trainer CLI runs on its parsed args."""
        return PARSED_ARGS_HOOK[self.name]

    def describe(self) -> str:
        return f"OpenRLHF {self.version or '(version unknown)'} ({self.name} args, {self.releases} family)"


def installed_openrlhf_version() -> str | None:
    for dist in DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _refuse(version: str | None, root: Path, why: str) -> UnsupportedHostError:
    return UnsupportedHostError(
        f"openrlhf-fair: the installed OpenRLHF {version or '(version unknown)'} at {root} is not supported: {why}. "
        f"openrlhf-fair supports OpenRLHF {SUPPORTED_RANGE}; install one with "
        f"`python3 -m openrlhf_fair.install --openrlhf {_default_release()}`."
    )


def _default_release() -> str:
    return releases.DEFAULT_OPENRLHF


def tested_releases() -> str:
    """The releases CI tests: the default with the whole suite, the matrix with the end-to-end runs."""
    return ", ".join([f"{releases.DEFAULT_OPENRLHF} (whole suite)"]
                     + [f"{release} (end-to-end runs)" for release in releases.CI_MATRIX])


@functools.lru_cache(maxsize=None)
def require_family() -> Family:
    """The installed release's family; raises `UnsupportedHostError` (naming version and range) when none fits."""
    spec = importlib.util.find_spec("openrlhf")  # a top-level package: found, not imported
    version = installed_openrlhf_version()
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedHostError(
            f"openrlhf-fair: OpenRLHF is not installed; it needs OpenRLHF {SUPPORTED_RANGE} "
            "(run `python3 -m openrlhf_fair.install`)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    release = release_tuple(version) if version else None
    if release is not None and release < OLDEST_SUPPORTED:
        raise _refuse(version, root, "it is older than 0.9.3, the oldest release the add-on is built and tested for")
    ppo_utils = root / "trainer" / "ppo_utils"
    generator = next((m for m in ("samples_generator", "experience_maker")
                      if "class SamplesGenerator" in _read(ppo_utils / f"{m}.py")), None)
    if generator is None or "def _process_response_into_experience" not in _read(ppo_utils / f"{generator}.py"):
        raise _refuse(version, root, "trainer/ppo_utils has no SamplesGenerator._process_response_into_experience")
    if "def hierarchize" in _read(root / "utils" / "config.py"):
        name, releases = "nested", "0.10.2-0.11.x"
    elif '"--micro_train_batch_size"' in _read(root / "cli" / "train_rm.py"):
        name, releases = "flat", "0.9.3-0.10.1"
    else:
        raise _refuse(version, root, "neither openrlhf/utils/config.py:hierarchize (nested args, 0.10.2+) nor the flat "
                                     "flags of 0.9.3-0.10.1 (--micro_train_batch_size in openrlhf/cli/train_rm.py)")
    return Family(name, releases, f"openrlhf.trainer.ppo_utils.{generator}", version, root)


def installed_family() -> Family | None:
    """The family, or None where OpenRLHF is missing or unsupported (for messages that must not fail)."""
    try:
        return require_family()
    except UnsupportedHostError:
        return None


def describe_host() -> str:
    try:
        return f"{require_family().describe()}; supported: {SUPPORTED_RANGE}; tested: {tested_releases()}"
    except UnsupportedHostError as error:
        return str(error).removeprefix("openrlhf-fair: ")


# --------------------------------------------------------------------------------------------- host arguments
@functools.lru_cache(maxsize=None)
def _cli_text(command: str | None = None) -> str:
    """The source of the installed CLI ``command`` (all of `HOST_CLIS` for None)."""
    family = require_family()
    return "".join(_read(family.root / "cli" / f"{name}.py") for name in ((command,) if command else HOST_CLIS))


def is_host_flag(command: str, flag: str) -> bool:
    """Whether the installed ``openrlhf.cli.<command>`` defines ``flag`` (e.g. ``--temperature`` on a flat
    train_ppo_ray, which looks like a typo of the add-on's ``--fair_temperature`` but is the host's own)."""
    family = installed_family()
    return family is not None and f'"{flag}"' in _cli_text(command)


def flat_name(dotted: str) -> str:
    """The flat (0.9.3 - 0.10.1) argument name of the nested ``dotted`` one, as the installed release spells it."""
    try:
        names = FLAT_NAMES[dotted]
    except KeyError:
        raise KeyError(f"openrlhf-fair: no flat-args name known for host argument {dotted!r} (add it to "
                       "openrlhf_fair.host.compat.FLAT_NAMES)") from None
    if isinstance(names, str):
        return names
    return next((name for name in names if f'"--{name}"' in _cli_text()), names[0])


def host_arg(args: Any, dotted: str, default: Any = None) -> Any:
    """The host argument ``dotted`` (nested name, e.g. ``"train.micro_batch_size"``) of OpenRLHF's parsed args;
    ``default`` when the release or this command has no such argument, or it is None."""
    if require_family().nested:
        node = args
        for part in dotted.split("."):
            node = getattr(node, part, None)
            if node is None:
                return default
        return node
    value = getattr(args, flat_name(dotted), None)
    return default if value is None else value


def set_host_arg(args: Any, dotted: str, value: Any) -> None:
    """Set the host argument ``dotted`` (it must exist in these args)."""
    if require_family().nested:
        *parents, last = dotted.split(".")
        node = args
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, value)
    else:
        setattr(args, flat_name(dotted), value)


def host_args_like(values: dict[str, Any]) -> SimpleNamespace:
    """A stand-in for OpenRLHF's parsed args holding ``values`` (nested names -> values) in the installed layout,
    for host classes the add-on builds itself (e.g. the report's RewardDataset reads ``strategy.args``)."""
    args = SimpleNamespace()
    for dotted, value in values.items():
        node = args
        if require_family().nested:
            *parents, _ = dotted.split(".")
            for part in parents:
                if not hasattr(node, part):
                    setattr(node, part, SimpleNamespace())
                node = getattr(node, part)
        set_host_arg(args, dotted, value)
    return args


def host_flag(dotted: str) -> str:
    """The command-line flag of host argument ``dotted`` in the installed release's spelling."""
    family = installed_family()
    return f"--{dotted}" if family is None or family.nested else f"--{flat_name(dotted)}"


def host_argv(argv: list[str]) -> list[str]:
    """A host command line written with nested flags (``--train.micro_batch_size 8``, ``--data.max_len=64``) in
    the installed release's spelling (for commands the add-on builds: the demo, tests)."""
    spelled = []
    for token in argv:
        if not isinstance(token, str):  # e.g. a Path value
            spelled.append(token)
            continue
        name, eq, value = token.partition("=")
        known = name.startswith("--") and name[2:] in FLAT_NAMES
        spelled.append(host_flag(name[2:]) + eq + value if known else token)
    return spelled


def in_host_spelling(text: str) -> str:
    """``text`` with each ``--dotted.flag`` spelled as the installed release does (unchanged on nested releases,
    where OpenRLHF is missing, and for dotted names the add-on does not know)."""
    family = installed_family()
    if family is None or family.nested:
        return text
    return _DOTTED_FLAG.sub(lambda m: host_flag(m.group(1)) if m.group(1) in FLAT_NAMES else m.group(0), text)


if __name__ == "__main__":  # for shell scripts: one token per line, e.g. mapfile -t ARGS < <(python -m ... "${ARGS[@]}")
    import sys

    print("\n".join(host_argv(sys.argv[1:])))
