"""The bounded pickle machine: same values as `pickle.loads` on plain data, CheckpointError on anything else."""

from __future__ import annotations

import pickle
import time
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from f3d_jax.weights.errors import CheckpointError
from f3d_jax.weights.pickle_machine import Limits, unpickle

_hashable = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**127), 2**127 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
_values = st.recursive(
    _hashable,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner, inner, inner)
        | st.dictionaries(_hashable, inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4).map(OrderedDict)
        | st.sets(_hashable, max_size=4)
    ),
    max_leaves=25,
)


def _typed(v):
    """A structure that tells apart values `==` confuses (1, 1.0, True; list vs tuple; dict vs OrderedDict)."""
    if isinstance(v, dict):
        return (type(v).__name__, [(_typed(k), _typed(x)) for k, x in v.items()])
    if isinstance(v, list | tuple):
        return (type(v).__name__, [_typed(x) for x in v])
    if isinstance(v, set | frozenset):
        return (type(v).__name__, sorted(repr(_typed(x)) for x in v))
    return (type(v).__name__, repr(v))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, protocol=st.integers(2, 5))
def test_same_value_as_pickle_loads(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    got = unpickle(data, source="v.pkl")
    assert _typed(got) == _typed(pickle.loads(data))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"]))
def test_random_bytes_raise_only_checkpoint_error(data, prefix):
    try:
        unpickle(prefix + data, source="r.pkl")
    except CheckpointError as e:
        assert str(e).startswith("r.pkl: ")


@settings(max_examples=150, deadline=None)
@given(value=_values, protocol=st.integers(2, 5), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                                   min_size=1, max_size=4), cut=st.integers(0, 10**6))
def test_mutated_pickles_raise_only_checkpoint_error(value, protocol, edits, cut):
    data = bytearray(pickle.dumps(value, protocol=protocol))
    for at, byte in edits:
        data[at % len(data)] = byte
    for blob in (bytes(data), bytes(data[: cut % len(data)])):
        try:
            unpickle(blob, source="m.pkl")
        except CheckpointError:
            pass


# ---- limits: each attack is refused fast, before it costs anything -------------------------------


def _refused(data: bytes, match: str, **limits) -> None:
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        unpickle(data, source="x.pkl", limits=Limits(**limits) if limits else Limits())
    assert time.perf_counter() - t < 2


def test_deep_nesting_is_refused_without_recursion():
    _refused(b"\x80\x02)" + b"\x85" * 100_000 + b".", "nested more than 100")  # 100k nested tuples
    _refused(b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b".", "nested MARKs")  # 100k nested lists
    # Lists nested through the memo, one level per step, never more than two on the stack.
    step = b"h\x00]q\x01a0h\x01q\x000"  # memo[0].append(L := []); memo[0] = L: the parent is sealed
    _refused(b"\x80\x02]q\x00" + step * 100_000 + b".", "after placing it|nested more than")


def test_shared_references_cannot_blow_up():
    # t = (); t = (t, t) 200 times: 2**200 logical nodes; hashing or printing it would never end.
    _refused(b"\x80\x02)" + b"2\x86" * 200 + b".", "elements")


def test_cycles_and_late_mutation_are_refused():
    _refused(b"\x80\x02]q\x00h\x00a.", "contains itself")  # l.append(l)
    _refused(b"\x80\x02]q\x00\x85h\x00K\x01a.", "after placing it")  # l in a tuple, then l.append(1)
    _refused(b"\x80\x02}q\x00h\x00K\x01h\x00s.", "contains itself|unhashable")  # d[d] = 1


def test_integers_are_capped():
    assert unpickle(b"\x80\x02\x8a\x10" + b"\xff" * 15 + b"\x7f.", source="x") == 2**127 - 1
    _refused(b"\x80\x02\x8a\x11" + b"\x01" * 17 + b".", "integer of 17 bytes")
    _refused(b"\x80\x02\x8b\x00\x00\x00\x10" + b"\x01" * 64 + b".", "integer of 268435456 bytes")  # LONG4 256 MiB


def test_other_bounds():
    _refused(b"\x80\x02" + b"N" * 1001 + b".", "stack grows past 1000", max_stack=1000)
    _refused(b"\x80\x02" + b"Nq\x00" * 10 + b"".join(b"r" + i.to_bytes(4, "little") for i in range(20)) + b".",
             "memoizes more than 10", max_memo=10)
    _refused(b"\x80\x02" + b"]0" * 101 + b"N.", "more than 100 objects", max_objects=100)
    blob = b"\x80\x02X\x00\x00\x10\x00" + b"a" * (1 << 20) + b"q\x00" + b"c_codecs\nencode\nh\x00X\x06\x00\x00\x00latin1\x86R0" * 80
    _refused(blob + b"N.", "more than 67108864 bytes")  # 80 x 1 MiB derived from one memoized string


def test_only_allowed_globals_and_build():
    _refused(pickle.dumps(print, protocol=2), "'builtins.print' is not allowed")
    _refused(b"\x80\x02ccollections\nOrderedDict\n}b.", "BUILD .* on a Global is not allowed")  # on the class
    _refused(b"\x80\x02ccollections\nOrderedDict\n)R}b.", "BUILD .* on a OrderedDict is not allowed")
    _refused(b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.", "only OrderedDict\\(\\)")
    _refused(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf16\x86R.", "latin1")
    _refused(b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ on <global collections.OrderedDict>")
    _refused(b"\x80\x02K\x01)R.", "REDUCE on a int is not allowed")
    _refused(b"\x80\x02(K\x01Q.", "persistent id")
    _refused(b"\x80\x02N", "without STOP")
    _refused(b"\x80\x02I1\n.", "unsupported pickle opcode")  # text-protocol INT
    _refused(b"(N.", "not a protocol 2-5 pickle")
