"""The patch contract every host patch relies on: replaced, idempotent, undoable, loud when the host moved."""

import types

import pytest

from openrlhf_fair.errors import HostMismatchError
from openrlhf_fair.host.patching import PatchStackError, is_patched, original_of, patch_attribute, undo_all


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


# ------------------------------------------------------------------------------------------ stacked patches
def plus_one(original):
    def loss(self, x):
        return original(self, x) + 1

    return loss


def plus_hundred(original):
    def loss(self, x):
        return original(self, x) + 100

    return loss


@pytest.fixture
def stacked():
    """Patches A (x10) then B (+1) on Host.loss; whatever a test leaves applied is undone afterwards."""
    plain = Host.__dict__["loss"]
    undo_a = patch_attribute(Host, "loss", wrap_times_ten, "test.A")
    undo_b = patch_attribute(Host, "loss", plus_one, "test.B")
    yield plain, undo_a, undo_b
    undo_b()
    undo_a()
    assert Host.__dict__["loss"] is plain


def test_stacked_patches_replace_the_target_in_order(stacked):
    plain, _, _ = stacked
    assert Host().loss(1) == 21  # (1 + 1) * 10 + 1: B wraps A wraps the host
    assert is_patched(Host, "loss", "test.A") and is_patched(Host, "loss", "test.B")
    assert original_of(Host.loss) is plain


def test_reapplying_an_inner_patch_is_harmless(stacked):
    again = patch_attribute(Host, "loss", wrap_times_ten, "test.A")  # A is not outermost: found along the chain
    assert Host().loss(1) == 21
    again()  # the no-op undo of the second application
    assert Host().loss(1) == 21 and is_patched(Host, "loss", "test.A")


def test_undo_outermost_then_inner_restores_each_previous_state(stacked):
    plain, undo_a, undo_b = stacked
    undo_b()
    assert Host().loss(1) == 20 and not is_patched(Host, "loss", "test.B")
    undo_a()
    assert Host.__dict__["loss"] is plain and Host().loss(1) == 2 and not is_patched(Host, "loss")


def test_undo_inner_first_splices_it_out_and_keeps_the_outer_patch(stacked):
    plain, undo_a, undo_b = stacked
    undo_a()
    assert Host().loss(1) == 3  # (1 + 1) + 1: B stays, A is gone
    assert is_patched(Host, "loss", "test.B") and not is_patched(Host, "loss", "test.A")
    assert original_of(Host.loss) is plain
    undo_a()  # undoing twice is harmless
    assert Host().loss(1) == 3
    undo_b()
    assert Host.__dict__["loss"] is plain and Host().loss(1) == 2


def test_undo_of_a_middle_patch_rebuilds_the_patches_above_it(stacked):
    _, undo_a, undo_b = stacked
    undo_c = patch_attribute(Host, "loss", plus_hundred, "test.C")
    assert Host().loss(1) == 121
    undo_b()  # B sits between A and C
    assert Host().loss(1) == 120  # (1 + 1) * 10 + 100
    assert [is_patched(Host, "loss", f"test.{p}") for p in "ABC"] == [True, False, True]
    undo_c()
    assert Host().loss(1) == 20
    undo_a()
    assert Host().loss(1) == 2


def test_undo_under_a_foreign_replacement_raises_instead_of_doing_nothing(stacked):
    _, undo_a, undo_b = stacked
    patched = Host.__dict__["loss"]
    Host.loss = lambda self, x: -1  # not an openrlhf-fair patch: the chain of originals ends here
    try:
        with pytest.raises(PatchStackError, match=r"cannot undo patch test\.B on Host\.loss"):
            undo_b()
    finally:
        Host.loss = patched


def test_stacked_staticmethods_stay_static():
    undo_a = patch_attribute(Host, "helper", lambda original: (lambda x: original(x) + 1), "test.helper.A")
    undo_b = patch_attribute(Host, "helper", lambda original: (lambda x: original(x) * 10), "test.helper.B")
    try:
        assert Host.helper(3) == 70 and Host().helper(3) == 70
        undo_a()
        assert isinstance(Host.__dict__["helper"], staticmethod) and Host().helper(3) == 60
    finally:
        undo_b()
        undo_a()
    assert isinstance(Host.__dict__["helper"], staticmethod) and Host.helper(3) == 6


def test_undo_of_an_inherited_attribute_leaves_the_subclass_without_its_own_copy():
    class Child(Host):
        pass

    undo = patch_attribute(Child, "loss", wrap_times_ten, "test.child")
    assert Child().loss(1) == 20 and Host().loss(1) == 2
    undo()
    assert "loss" not in Child.__dict__ and Child().loss(1) == 2


def test_module_attribute_patches_stack_and_unwind():
    module = types.ModuleType("fake_host_config")
    module.hierarchize = lambda args: [args]
    plain = module.hierarchize
    undo_a = patch_attribute(module, "hierarchize", lambda o: (lambda a: o(a) + ["A"]), "test.module.A")
    undo_b = patch_attribute(module, "hierarchize", lambda o: (lambda a: o(a) + ["B"]), "test.module.B")
    assert module.hierarchize(0) == [0, "A", "B"]
    undo_a()
    assert module.hierarchize(0) == [0, "B"]
    undo_b()
    assert module.hierarchize is plain
