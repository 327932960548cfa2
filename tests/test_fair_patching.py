"""The patch contract every host patch relies on: replaced, idempotent, undoable, loud when the host moved."""

import pytest

from openrlhf_fair.host.patching import HostMismatchError, is_patched, original_of, patch_attribute, undo_all


class Host:
    def loss(self, x):
        return x + 1

    @staticmethod
    def helper(x):
        return x * 2


def wrap_times_ten(original):
    def loss(self, x):
        return original(self, x) * 10

    return loss


def test_patch_replaces_wraps_and_undoes():
    plain = Host.__dict__["loss"]
    undo = patch_attribute(Host, "loss", wrap_times_ten, "test.loss")
    try:
        assert Host().loss(1) == 20
        assert is_patched(Host, "loss", "test.loss")
        assert original_of(Host.loss) is plain
    finally:
        undo()
    assert Host.__dict__["loss"] is plain and Host().loss(1) == 2
    assert not is_patched(Host, "loss")


def test_applying_twice_is_harmless():
    undo_first = patch_attribute(Host, "loss", wrap_times_ten, "test.loss")
    undo_second = patch_attribute(Host, "loss", wrap_times_ten, "test.loss")
    try:
        assert Host().loss(1) == 20  # wrapped once, not twice
        undo_second()  # the no-op undo of the second application leaves the patch in place
        assert Host().loss(1) == 20
    finally:
        undo_first()
    assert Host().loss(1) == 2


def test_staticmethod_stays_static():
    undo = patch_attribute(Host, "helper", lambda original: (lambda x: original(x) + 1), "test.helper")
    try:
        assert Host.helper(3) == 7 and Host().helper(3) == 7
    finally:
        undo()
    assert Host.helper(3) == 6


def test_moved_host_symbol_fails_loudly():
    with pytest.raises(HostMismatchError, match=r"Host\.renamed_loss not found"):
        patch_attribute(Host, "renamed_loss", wrap_times_ten, "test.renamed")


def test_undo_all_undoes_in_reverse_order_including_later_additions():
    calls, undos = [], []
    undo = undo_all(undos)
    undos += [lambda: calls.append("first"), lambda: calls.append("second")]
    undo()
    assert calls == ["second", "first"]
