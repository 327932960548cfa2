"""Checks of the user's inputs before anything runs: data files, tokenizers, a run's flags."""
