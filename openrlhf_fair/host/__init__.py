"""The thin layer that touches OpenRLHF: one module per host file it patches.

Every module here imports openrlhf inside functions only, checks the host first (`host.version`),
and patches through `host.patching`, so each patch is explicit, idempotent and undoable.
"""
