"""Every error a user can act on: each says what is wrong and what to do.

The `openrlhf` command prints an `AddonError` alone and exits 2 (the traceback only with OPENRLHF_FAIR_DEBUG=1
or ``openrlhf --debug``); the report, demo and ppo-report commands print theirs without a traceback.
"""


class AddonError(Exception):
    """Base of the add-on's errors a user can act on (a setting, the data, the host's version).

    The message says what is wrong and what to do; the `openrlhf` command prints it alone and exits 2 (the
    traceback only with OPENRLHF_FAIR_DEBUG=1 or ``openrlhf --debug``; see `openrlhf_fair.cli.runner`).
    """


class FairnessConfigError(AddonError, ValueError):
    """A fairness setting that cannot work (tau = 1, negative ALPHA/GAMMA, ...); the message names the flag."""


class FairnessInputError(ValueError):
    """An input the fairness math cannot score: NaN/Inf, empty, non-positive allocation, tau = 1, T <= 0."""


class DataError(AddonError, ValueError):
    """A data file that cannot train or be scored as given; the message names the file, the row and the column."""


class PreflightError(AddonError, ValueError):
    """The run cannot start as given; the message names each file / row / column / flag and the fix."""


class HostMismatchError(AddonError, RuntimeError):
    """The installed OpenRLHF does not have the structure this add-on was written against."""


class UnsupportedHostError(HostMismatchError):
    """The installed OpenRLHF is outside the supported range or matches no known structure."""


class GroupKeyError(AddonError, ValueError):
    """``--fairness_group_key`` cannot be used with this dataset or these host flags."""


class LabelColumnError(AddonError, ValueError):
    """``--fair_unit label:KEY`` cannot be served by this prompt dataset."""


class FairnessTrainingError(AddonError, RuntimeError):
    """The fairness term became NaN/Inf (or could not be computed) during training; the message names the step.
    An AddonError: the `openrlhf` command prints the message alone and exits 2 (traceback with --debug)."""


class ReportError(RuntimeError):
    """A problem with the user's input (data file, model folder, options): printed without a traceback."""


class PpoReportError(RuntimeError):
    """Bad input (no logs, unreadable logs): printed without a traceback, exit status 2."""


class DemoError(RuntimeError):
    """A problem with the demo's inputs or one of its steps: printed without a traceback."""


class FixtureUnavailable(RuntimeError):
    """A fixture needs a package that is not installed; the message says which and how to install it."""


class DebiasError(ValueError):
    """Input `debias` cannot work with (a setting, the data, the checkpoint); the message says what to do."""
