"""`openrlhf-fair debias`: make a saved reward model blind to a bias direction (length, a group) without retraining.

OpenRLHF's reward is r = w . h, a linear value head on the last token's hidden state. `debias` estimates each bias
direction d from the user's pairs, replaces w by w - s (w . d / |d|^2) d (several directions orthogonalised first),
rescales the head so the rewards keep their spread, and writes an ordinary OpenRLHF checkpoint in which only the
head changed, with a record of what was removed in its config.json.

Modules: the math in `openrlhf_fair.core.debias` (torch only), `checkpoint` (the head, hidden states, writing the copy), `cli`.
"""

from openrlhf_fair.debias.cli import build_parser, main, run_debias
from openrlhf_fair.errors import DebiasError

__all__ = ["DebiasError", "build_parser", "main", "run_debias"]
