"""A small, bounded pickle interpreter: the opcodes `torch.save` and `pickle.dumps` (protocols 2-5) emit
for plain data, and nothing else.

The standard `pickle.Unpickler` (even with `find_class` restricted) calls `__setstate__`/`__reduce__`
machinery of real classes, recurses in C and allocates whatever the stream asks for. This machine
instead:

- resolves globals only through a closed table of `Global`s whose callables are our own pure
  functions (never a real class's constructor or `__setstate__`);
- applies `BUILD` only through explicit per-type builders (e.g. an `argparse.Namespace` bag);
  any other `BUILD` is refused;
- is iterative (no Python or C recursion while loading) and bounds every resource: stack, mark
  stack, memo, objects created, bytes derived by globals, integer size, and the nesting depth and
  logical size (shared references counted each time) of every container, so that hashing,
  comparing or printing a result is cheap;
- never mutates a container after it was placed inside another one (which also rules out cycles).

Every malformed or hostile stream raises `CheckpointError(source, ...)`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from f3d_jax.weights.errors import CheckpointError

__all__ = ["PLAIN_GLOBALS", "Global", "Limits", "unpickle"]


@dataclass(frozen=True)
class Limits:
    """Resource bounds of one `unpickle` call (the defaults fit every official checkpoint by far)."""

    max_depth: int = 100  # nesting depth of any container
    max_weight: int = 1 << 22  # logical size of any container (nodes; str/bytes count 1 + len // 64)
    max_objects: int = 2_000_000  # objects created in total
    max_memo: int = 2_000_000
    max_stack: int = 1_000_000
    max_marks: int = 1_000
    max_int_bytes: int = 16  # LONG1/LONG4 payload: up to 128-bit integers
    max_global_name: int = 256
    max_derived_bytes: int = 64 << 20  # bytes built by globals (e.g. _codecs.encode), in total


@dataclass(frozen=True, eq=False)
class Global:
    """An allow-listed global: what `REDUCE` / `NEWOBJ` on it do, as pure functions of the arguments.

    `reduce(args, ctx)` / `newobj(args, ctx)` return the new object; `None` means the opcode is
    refused for this global. `ctx` is the running machine (`ctx.charge(nbytes)`, `ctx.fail(msg)`).
    """

    name: str
    reduce: Callable[[tuple, Any], Any] | None = None
    newobj: Callable[[tuple, Any], Any] | None = None

    def __repr__(self) -> str:
        return f"<global {self.name}>"


# ---- globals every pickled plain value may need (protocol 2 spells bytes/sets through them) ----------


def _ordered_dict(args: tuple, ctx: Any) -> collections.OrderedDict:
    if args != ():
        ctx.fail("collections.OrderedDict called with arguments (only OrderedDict() is allowed)")
    return collections.OrderedDict()


def _codecs_encode(args: tuple, ctx: Any) -> bytes:
    if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
        ctx.fail("_codecs.encode is allowed only as encode(str, 'latin1') (how protocol 2 spells bytes)")
    ctx.charge(len(args[0]))
    try:
        return args[0].encode("latin1")
    except UnicodeEncodeError:
        ctx.fail("_codecs.encode of a string that is not latin-1")


def _bytes(args: tuple, ctx: Any) -> bytes:
    if args != ():
        ctx.fail("builtins.bytes called with arguments (only bytes() is allowed)")
    return b""


def _set_like(kind: type) -> Callable[[tuple, Any], Any]:
    def make(args: tuple, ctx: Any) -> Any:
        if args == ():
            return kind()
        if len(args) != 1 or type(args[0]) is not list:
            ctx.fail(f"builtins.{kind.__name__} is allowed only on a list")
        ctx.charge(8 * len(args[0]))
        for item in args[0]:
            ctx.check_hashable(item)
        return kind(args[0])

    return make


PLAIN_GLOBALS: Mapping[tuple[str, str], Global] = {
    ("collections", "OrderedDict"): Global("collections.OrderedDict", reduce=_ordered_dict),
    ("_codecs", "encode"): Global("_codecs.encode", reduce=_codecs_encode),
    ("builtins", "bytes"): Global("builtins.bytes", reduce=_bytes),
    ("builtins", "set"): Global("builtins.set", reduce=_set_like(set)),
    ("builtins", "frozenset"): Global("builtins.frozenset", reduce=_set_like(frozenset)),
}

_CONTAINERS = (list, dict, tuple, set, frozenset)
_MARK = object()  # never leaves the machine


@dataclass
class _Machine:
    data: bytes
    source: Any
    resolve_global: Callable[[str, str], Any]
    persistent_load: Callable[[Any], Any] | None
    builders: Mapping[type, Callable[[Any, Any, Any], None]]
    limits: Limits
    pos: int = 0
    stack: list = field(default_factory=list)
    marks: list = field(default_factory=list)
    memo: dict = field(default_factory=dict)
    # id -> (depth, weight) of every container made here; `keep` holds them alive so ids stay unique.
    info: dict = field(default_factory=dict)
    keep: list = field(default_factory=list)
    sealed: set = field(default_factory=set)
    objects: int = 0
    derived: int = 0

    # ---- helpers used by globals and builders ---------------------------------------------------

    def fail(self, problem: str) -> Any:
        raise CheckpointError(self.source, f"data.pkl: {problem}")

    def charge(self, nbytes: int) -> None:
        self.derived += nbytes
        if self.derived > self.limits.max_derived_bytes:
            self.fail(f"the pickle builds more than {self.limits.max_derived_bytes} bytes through its globals")

    def check_hashable(self, obj: Any) -> None:
        try:
            hash(obj)  # bounded: depth and logical size of every container are capped
        except TypeError:
            self.fail(f"unhashable {type(obj).__name__} used as a dict key or set element")

    def dw(self, obj: Any) -> tuple[int, int]:
        got = self.info.get(id(obj))
        if got is not None:
            return got
        if isinstance(obj, str | bytes):
            return 0, 1 + len(obj) // 64
        return 0, 1

    def register(self, obj: Any, children: Iterable[Any]) -> Any:
        """Records a new container (depth, weight) and seals its children."""
        self.info[id(obj)] = self._adopt(obj, children, 1, 1)
        self.keep.append(obj)
        return obj

    def grow(self, target: Any, children: Iterable[Any]) -> None:
        """Accounts for children added to an existing, still unsealed container."""
        if id(target) in self.sealed:
            self.fail(f"the pickle modifies a {type(target).__name__} after placing it in another object")
        depth, weight = self.info.get(id(target), (1, 1))
        if id(target) not in self.info:
            self.keep.append(target)
        self.info[id(target)] = self._adopt(target, children, depth, weight)

    def _adopt(self, parent: Any, children: Iterable[Any], depth: int, weight: int) -> tuple[int, int]:
        """(depth, weight) of `parent` once it holds `children` (checked against the limits); seals them."""
        for child in children:
            if child is parent:
                self.fail("a container that contains itself")
            d, w = self.dw(child)
            depth, weight = max(depth, d + 1), weight + w
            self.sealed.add(id(child))
        self._check_size(depth, weight)
        return depth, weight

    def _check_size(self, depth: int, weight: int) -> None:
        if depth > self.limits.max_depth:
            self.fail(f"nested more than {self.limits.max_depth} levels deep")
        if weight > self.limits.max_weight:
            self.fail(f"an object of more than {self.limits.max_weight} elements (shared ones counted each time)")

    # ---- stream reading -------------------------------------------------------------------------

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            self.fail("the pickle ends in the middle of an opcode (truncated)")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little", signed=False)

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + self.limits.max_global_name + 1)
        if end < 0:
            self.fail("malformed or overlong GLOBAL name")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return self.fail("GLOBAL name is not valid UTF-8")

    def push(self, obj: Any) -> None:
        if len(self.stack) >= self.limits.max_stack:
            self.fail(f"the pickle stack grows past {self.limits.max_stack} entries")
        self.stack.append(obj)

    def new(self, obj: Any) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            self.fail(f"the pickle builds more than {self.limits.max_objects} objects")
        self.push(obj)

    def pop(self) -> Any:
        if not self.stack:
            self.fail("stack underflow (malformed pickle)")
        obj = self.stack.pop()
        if obj is _MARK:
            self.fail("an opcode consumed a MARK (malformed pickle)")
        return obj

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            self.fail("stack underflow (malformed pickle)")
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.marks:
            self.fail("no MARK for an opcode that needs one (malformed pickle)")
        at = self.marks.pop()
        items = self.stack[at + 1 :]
        del self.stack[at:]
        return items

    def memo_put(self, idx: int) -> None:
        if idx not in self.memo and len(self.memo) >= self.limits.max_memo:
            self.fail(f"the pickle memoizes more than {self.limits.max_memo} objects")
        self.memo[idx] = self.top()

    def memo_get(self, idx: int) -> None:
        try:
            obj = self.memo[idx]
        except KeyError:
            self.fail(f"memo key {idx} was never stored (malformed pickle)")
        self.push(obj)

    def unicode(self, n: int) -> None:
        if n > len(self.data) - self.pos:
            self.fail("a string runs past the end of the pickle (truncated)")
        try:
            self.new(self.take(n).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            self.fail("a string is not valid UTF-8")

    def long(self, n: int) -> None:
        if n < 0 or n > self.limits.max_int_bytes:
            self.fail(f"an integer of {n} bytes (at most {self.limits.max_int_bytes} are allowed)")
        self.new(int.from_bytes(self.take(n), "little", signed=True))

    # ---- container opcodes ----------------------------------------------------------------------

    def tuple_of(self, items: list) -> None:
        t = tuple(items)
        self.new(self.register(t, items) if items else t)

    def set_items(self, target: Any, items: list) -> None:
        if len(items) % 2:
            self.fail("SETITEMS with an odd number of items")
        if type(target) not in (dict, collections.OrderedDict):
            self.fail(f"SETITEM on a {type(target).__name__}, not a dict")
        for k in items[::2]:
            self.check_hashable(k)
        self.grow(target, items)
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def append_items(self, target: Any, items: list) -> None:
        if type(target) is not list:
            self.fail(f"APPEND on a {type(target).__name__}, not a list")
        self.grow(target, items)
        target.extend(items)

    def global_(self, module: str, name: str) -> None:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 spellings (protocol 2)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        self.new(self.resolve_global(module, name))

    def call(self, opname: str, args: Any, fn: Any) -> None:
        if type(args) is not tuple:
            self.fail(f"{opname} arguments are a {type(args).__name__}, not a tuple")
        how = None
        if isinstance(fn, Global):
            how = fn.reduce if opname == "REDUCE" else fn.newobj
        if how is None:
            what = repr(fn) if isinstance(fn, Global) else f"a {type(fn).__name__}"
            self.fail(f"{opname} on {what} is not allowed")
        result = how(args, self)
        if isinstance(result, dict):  # e.g. set(list): account for the elements of new containers
            self.register(result, [x for kv in result.items() for x in kv])
        elif isinstance(result, _CONTAINERS) and len(result):
            self.register(result, list(result))
        self.new(result)

    def build(self) -> None:
        state = self.pop()
        target = self.top()
        builder = self.builders.get(type(target))
        if builder is None:
            self.fail(f"BUILD (set state) on a {type(target).__name__} is not allowed")
        builder(target, state, self)

    # ---- main loop ------------------------------------------------------------------------------

    def run(self) -> Any:
        data = self.data
        if data[:1] != b"\x80" or len(data) < 2 or not 2 <= data[1] <= 5:
            self.fail("not a protocol 2-5 pickle")
        while True:
            if self.pos >= len(data):
                self.fail("the pickle ends without STOP (truncated)")
            op = data[self.pos]
            self.pos += 1
            handler = _OPS.get(op)
            if handler is None:
                self.fail(f"unsupported pickle opcode {bytes([op])!r} at byte {self.pos - 1}")
            if handler is _stop:
                return self.pop()
            handler(self)


# ---- opcode table ------------------------------------------------------------------------------


def _stop(m: _Machine) -> None:  # handled in run()
    raise AssertionError


def _proto(m: _Machine) -> None:
    if not 2 <= m.uint(1) <= 5:
        m.fail("unsupported pickle protocol")


def _frame(m: _Machine) -> None:
    if m.uint(8) > len(m.data) - m.pos:
        m.fail("a FRAME runs past the end of the pickle (truncated)")


def _mark(m: _Machine) -> None:
    if len(m.marks) >= m.limits.max_marks:
        m.fail(f"more than {m.limits.max_marks} nested MARKs")
    m.marks.append(len(m.stack))
    m.push(_MARK)


def _empty(kind: type) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        m.new(m.register(kind(), ()))

    return op


def _tuple_n(n: int) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        items = [m.pop() for _ in range(n)][::-1]
        m.tuple_of(items)

    return op


def _list(m: _Machine) -> None:
    items = m.pop_mark()
    m.new(m.register(list(items), items))


def _dict(m: _Machine) -> None:
    items = m.pop_mark()
    d: dict = m.register({}, ())
    m.set_items(d, items)
    m.new(d)


def _setitem(m: _Machine) -> None:
    v = m.pop()
    k = m.pop()
    m.set_items(m.top(), [k, v])


def _setitems(m: _Machine) -> None:
    items = m.pop_mark()
    m.set_items(m.top(), items)


def _append(m: _Machine) -> None:
    v = m.pop()
    m.append_items(m.top(), [v])


def _appends(m: _Machine) -> None:
    items = m.pop_mark()
    m.append_items(m.top(), items)


def _additems(m: _Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if type(target) is not set:
        m.fail(f"ADDITEMS on a {type(target).__name__}, not a set")
    for item in items:
        m.check_hashable(item)
    m.grow(target, items)
    target.update(items)


def _frozenset(m: _Machine) -> None:
    items = m.pop_mark()
    for item in items:
        m.check_hashable(item)
    fs = frozenset(items)
    m.new(m.register(fs, items) if items else fs)


def _pop(m: _Machine) -> None:
    if m.stack and m.stack[-1] is _MARK:
        m.pop_mark()
    else:
        m.pop()


def _dup(m: _Machine) -> None:
    m.push(m.top())


def _stack_global(m: _Machine) -> None:
    name = m.pop()
    module = m.pop()
    if type(module) is not str or type(name) is not str:
        m.fail("STACK_GLOBAL on something other than two strings")
    m.global_(module, name)


def _reduce(m: _Machine) -> None:
    args = m.pop()
    fn = m.pop()
    m.call("REDUCE", args, fn)


def _newobj(m: _Machine) -> None:
    args = m.pop()
    cls = m.pop()
    m.call("NEWOBJ", args, cls)


def _binpersid(m: _Machine) -> None:
    pid = m.pop()
    if m.persistent_load is None:
        m.fail("a persistent id, which this file may not contain")
    m.new(m.persistent_load(pid))


def _const(value: Any) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        m.push(value)

    return op


def _unpack(fmt: str) -> Callable[[_Machine], None]:
    size = struct.calcsize(fmt)

    def op(m: _Machine) -> None:
        m.new(struct.unpack(fmt, m.take(size))[0])

    return op


def _bytes_n(nlen: int) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        n = m.uint(nlen)
        if n > len(m.data) - m.pos:
            m.fail("a bytes object runs past the end of the pickle (truncated)")
        m.new(m.take(n))

    return op


def _long4(m: _Machine) -> None:
    m.long(int.from_bytes(m.take(4), "little", signed=True))


_OPS: dict[int, Callable[[_Machine], None]] = {
    ord(b"."): _stop,
    0x80: _proto,
    0x95: _frame,
    ord(b"("): _mark,
    ord(b"0"): _pop,
    ord(b"1"): lambda m: m.pop_mark() and None,
    ord(b"2"): _dup,
    ord(b"}"): _empty(dict),
    ord(b"]"): _empty(list),
    ord(b")"): lambda m: m.new(()),
    0x8F: _empty(set),
    0x90: _additems,
    0x91: _frozenset,
    ord(b"t"): lambda m: m.tuple_of(m.pop_mark()),
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    ord(b"l"): _list,
    ord(b"d"): _dict,
    ord(b"a"): _append,
    ord(b"e"): _appends,
    ord(b"s"): _setitem,
    ord(b"u"): _setitems,
    ord(b"J"): _unpack("<i"),
    ord(b"K"): _unpack("<B"),
    ord(b"M"): _unpack("<H"),
    0x8A: lambda m: m.long(m.uint(1)),
    0x8B: _long4,
    ord(b"G"): _unpack(">d"),
    ord(b"N"): _const(None),
    0x88: _const(True),
    0x89: _const(False),
    ord(b"X"): lambda m: m.unicode(m.uint(4)),
    0x8C: lambda m: m.unicode(m.uint(1)),
    0x8D: lambda m: m.unicode(m.uint(8)),
    ord(b"B"): _bytes_n(4),
    ord(b"C"): _bytes_n(1),
    0x8E: _bytes_n(8),
    0x96: _bytes_n(8),  # BYTEARRAY8 (protocol 5, e.g. a numpy array's in-band buffer): read as immutable bytes
    ord(b"q"): lambda m: m.memo_put(m.uint(1)),
    ord(b"r"): lambda m: m.memo_put(m.uint(4)),
    0x94: lambda m: m.memo_put(len(m.memo)),
    ord(b"h"): lambda m: m.memo_get(m.uint(1)),
    ord(b"j"): lambda m: m.memo_get(m.uint(4)),
    ord(b"c"): lambda m: m.global_(m.line(), m.line()),
    0x93: _stack_global,
    ord(b"R"): _reduce,
    0x81: _newobj,
    ord(b"b"): lambda m: m.build(),
    ord(b"Q"): _binpersid,
}


def unpickle(
    data: bytes,
    *,
    source: Any,
    resolve_global: Callable[[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    builders: Mapping[type, Callable[[Any, Any, Any], None]] | None = None,
    limits: Limits = Limits(),
) -> Any:
    """Runs the pickle `data` on the bounded machine.

    Args:
        data: the pickle bytes (protocol 2-5).
        source: named in every error (the file).
        resolve_global: `(module, name) -> object` for GLOBAL/STACK_GLOBAL (names already mapped from
            their Python 2 spellings); it raises `CheckpointError` to refuse. Default: `PLAIN_GLOBALS`.
        persistent_load: `pid -> object` for BINPERSID; `None` refuses persistent ids.
        builders: `type -> fn(obj, state, machine)` for the only objects `BUILD` may apply to.
        limits: resource bounds.

    Returns:
        The unpickled object: plain Python values plus whatever the globals/persistent_load return.

    Raises:
        CheckpointError: malformed, unsupported or over-limit stream, or a refused global/BUILD.
    """

    def plain(module: str, name: str) -> Any:
        try:
            return PLAIN_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(source, f"data.pkl: the global '{module}.{name}' is not allowed") from None

    m = _Machine(bytes(data), source, resolve_global or plain, persistent_load, builders or {}, limits)
    return m.run()
