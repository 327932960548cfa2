"""The demo's methods: which reward models `openrlhf-fair demo --methods` trains, their train_rm flags and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from openrlhf_fair.errors import DemoError

__all__ = ["KIND_NAMES", "METHOD_KINDS", "SWEEP", "Method", "MethodKind", "parse_methods"]


@dataclass(frozen=True)
class MethodKind:
    """One kind of reward model the demo trains: the train_rm flag its strength sets, under which parameter name."""

    name: str
    strength: Optional[str] = None  # the parameter holding the strength (None: plain Bradley-Terry)
    flag: Optional[str] = None  # the train_rm flag it goes to
    label: str = ""  # label prefix of the strength, e.g. fr_a1 for reg=1
    fairness: bool = True  # takes the shared fairness parameters (tau, T, group_key)
    temperature_flag: str = "--fairness_temperature"  # where its T goes


# Labels keep the letters of the first release (fr_a1, fc_paper_g0.5) so that the stored results stay comparable.
METHOD_KINDS = {kind.name: kind for kind in (
    MethodKind("bt", fairness=False),
    MethodKind("fr", "reg", "--fairness_reg", "a"),  # Fairness Regularization
    MethodKind("fc", "coef", "--fairness_coef", "g"),  # Fairness Coefficient (with its form)
    MethodKind("level", "reg", "--fairness_level_reg", "r",  # reward-level fairness (scale-free)
               temperature_flag="--fairness_level_temperature"),
    MethodKind("rc", "coef", "--reward_centering", "c", fairness=False),  # baseline: reward centering
    MethodKind("bsr", "coef", "--batch_sum_reg", "c", fairness=False),  # baseline: batch-sum regularisation
)}
KIND_NAMES = ", ".join(METHOD_KINDS)


@dataclass
class Method:
    """One reward model to train: a kind of METHOD_KINDS, its parameters and its label."""

    kind: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def fairness_flags(self) -> list[str]:
        kind, p = METHOD_KINDS[self.kind], self.params
        if kind.flag is None:
            return []
        flags = [kind.flag, str(p[kind.strength])]
        if self.kind == "fc":
            flags += ["--fairness_coef_form", p["form"]]
        if kind.fairness:
            flags += ["--fairness_tau", str(p["tau"]), kind.temperature_flag, str(p["temperature"])]
            if p.get("group_key"):
                flags += ["--fairness_group_key", p["group_key"]]
        return flags


_PARAM_NAMES = {"reg": float, "coef": float, "form": str, "tau": float, "temperature": float, "T": float,
                "group_key": str, "label": str}


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _default_params(kind: MethodKind, defaults: dict) -> dict:
    params = {}
    if kind.fairness:
        temperature = defaults.get(f"{kind.name}_temperature", defaults["temperature"])  # level: its own unit
        params.update(tau=defaults["tau"], temperature=temperature, group_key=defaults["group_key"])
    if kind.strength:
        params[kind.strength] = defaults[kind.name]
    if kind.name == "fc":
        params["form"] = defaults["form"]
    return params


def _label(kind: MethodKind, params: dict) -> str:
    label = kind.name
    if kind.name == "fc":
        label += f"_{params['form']}"
    if kind.strength:
        label += f"_{kind.label}{_num(params[kind.strength])}"
    if kind.fairness:
        if params["tau"] != -1.0:
            label += f"_tau{_num(params['tau'])}"
        if params["temperature"] != 1.0:
            label += f"_T{_num(params['temperature'])}"
        if params.get("group_key"):
            label += "_group"
    return label


def parse_methods(spec: str, defaults: dict) -> list[Method]:
    """``"bt,fr,fc"`` or with parameters ``"fr:reg=0.1,fc:coef=0.5:form=inverse,level:reg=1:group_key=category"``.

    ``defaults`` holds each kind's strength under the kind's name (fr, fc, level, rc, bsr) and the shared form,
    tau, temperature and group_key; ``level_temperature`` (if given) is level's T, in units of the level std."""
    methods = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, *assignments = item.split(":")
        if name not in METHOD_KINDS:
            raise DemoError(f"--methods: unknown method {name!r} in {item!r} ({KIND_NAMES})")
        kind = METHOD_KINDS[name]
        params = _default_params(kind, defaults)
        given = {}
        for a in assignments:
            if "=" not in a:
                raise DemoError(f"--methods: expected key=value in {item!r}, got {a!r}")
            key, value = a.split("=", 1)
            if key not in _PARAM_NAMES:
                raise DemoError(f"--methods: unknown parameter {key!r} in {item!r} ({', '.join(_PARAM_NAMES)})")
            key = "temperature" if key == "T" else key
            if key != "label" and key not in params:
                taken = f"only {', '.join(params)}" if params else "no fairness parameters"
                raise DemoError(f"--methods: {name} takes {taken}, not {key!r} ({item!r})")
            try:
                given[key] = _PARAM_NAMES[key](value)
            except ValueError as e:
                raise DemoError(f"--methods: bad value for {key} in {item!r}: {e}") from e
        label = given.pop("label", None)
        params.update(given)
        methods.append(Method(name, params, label or _label(kind, params)))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise DemoError(f"--methods: two methods have the same label ({labels}); add label=NAME")
    if not methods:
        raise DemoError("--methods: nothing to train")
    return methods


# A small grid for the Pareto table: both methods at the paper's and at stronger settings, both FC forms, and
# FR over the per-group mean allocations (--fairness_group_key), which targets the category gap directly.
SWEEP = ("bt,fr:reg=0.1,fr:reg=1,fc:coef=0.5:form=paper,fc:coef=0.5:form=inverse,"
         "fr:reg=1:group_key=category")
