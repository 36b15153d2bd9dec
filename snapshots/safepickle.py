"""A restricted reader for pickled plain data, such as chromadb's `index_metadata.pickle`.

chromasnap never unpickles. This module walks a pickle's opcodes with the standard
library's disassembler (`pickletools.genops`, which decodes arguments and builds nothing)
on a small stack machine of its own that knows only the opcodes building dicts, lists,
tuples, str, bytes, int, float, bool and None (plus MARK, the memo, FRAME, PROTO, STOP).
Every opcode that names a global, calls, constructs or extends an object (GLOBAL,
STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX, REDUCE, BUILD, EXT1/2/4, PERSID, BINPERSID),
out-of-band buffers, sets, Python 2 strings and anything unknown is refused with
`PickleRefused`, before anything of the pickle is used. Input size, nesting, element
counts and the memo are bounded; a result that refers to itself is refused.

chromadb 1.0.20 and 1.5.9 write `index_metadata.pickle` with Rust's serde_pickle
(protocol 3): one dict {dimensionality, total_elements_added, max_seq_id, id_to_label,
label_to_id, id_to_seq_id} built with EMPTY_DICT, MARK ... SETITEMS batches, BINUNICODE
and BININT (docs/salvage.md).

`parse_prefix` also reads what a truncated or garbled pickle holds before the damage.
"""

from __future__ import annotations

import io
import pickletools
import struct
from dataclasses import dataclass
from typing import Any


class PickleError(ValueError):
    """The bytes are not a pickle of plain data this module accepts."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset


class PickleRefused(PickleError):
    """Forbidden content (a global, an object constructor, an extension, a set, an
    out-of-band buffer, an unknown opcode) or a limit exceeded. Never salvaged."""


class PickleDamaged(PickleError):
    """Not a complete, well-formed pickle: truncated, garbled, or structurally invalid."""

    eof = False
    """The bytes simply end (a clean truncation), rather than turning into garbage."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a pickle may make this reader do."""

    max_bytes: int = 1 << 30
    """Input size."""
    max_depth: int = 64
    """Open MARKs at once, and nesting of the result."""
    max_items: int = 50_000_000
    """Objects pushed, and elements visited when the result is checked."""
    max_memo: int = 10_000_000
    """Memo entries (and the largest memo index)."""


DEFAULT_LIMITS = Limits()

REFUSED = {
    "GLOBAL": "names a global",
    "STACK_GLOBAL": "names a global",
    "INST": "constructs an object",
    "OBJ": "constructs an object",
    "NEWOBJ": "constructs an object",
    "NEWOBJ_EX": "constructs an object",
    "REDUCE": "calls a callable",
    "BUILD": "sets an object's state",
    "EXT1": "names a registered extension",
    "EXT2": "names a registered extension",
    "EXT4": "names a registered extension",
    "PERSID": "names a persistent object",
    "BINPERSID": "names a persistent object",
    "NEXT_BUFFER": "takes an out-of-band buffer",
    "READONLY_BUFFER": "takes an out-of-band buffer",
    "BYTEARRAY8": "builds a bytearray",
    "EMPTY_SET": "builds a set",
    "ADDITEMS": "builds a set",
    "FROZENSET": "builds a frozenset",
    "STRING": "is a Python 2 string (ambiguous encoding)",
    "BINSTRING": "is a Python 2 string (ambiguous encoding)",
    "SHORT_BINSTRING": "is a Python 2 string (ambiguous encoding)",
}

PUSH_ARG = {
    "INT",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG",
    "LONG1",
    "LONG4",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "UNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "FLOAT",
    "BINFLOAT",
}
PUSH_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
SCALARS = (str, bytes, int, float, bool, type(None))


class _Machine:
    """The stack machine: plain data only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.pushed = 0
        self.result: Any = None
        self.stopped = False
        self.last: tuple[list[Any], int] | None = None
        """(stack, length) right after the latest push."""

    def push(self, value: Any, pos: int) -> None:
        self.pushed += 1
        if self.pushed > self.limits.max_items:
            raise PickleRefused(f"more than {self.limits.max_items} objects", pos)
        self.stack.append(value)
        self.last = (self.stack, len(self.stack))

    def pop_mark(self, pos: int) -> list[Any]:
        if not self.metastack:
            raise PickleDamaged("an opcode needs a MARK and there is none", pos)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self, pos: int, n: int = 1) -> None:
        if len(self.stack) < n:
            raise PickleDamaged("stack underflow", pos)

    def step(self, name: str, arg: Any, pos: int) -> None:
        lim = self.limits
        if name in REFUSED:
            raise PickleRefused(f"opcode {name} {REFUSED[name]}", pos)
        if name in PUSH_ARG:
            self.push(arg, pos)
        elif name in PUSH_CONST:
            self.push(PUSH_CONST[name], pos)
        elif name in ("PROTO", "FRAME"):
            if name == "PROTO" and not 0 <= arg <= 5:
                raise PickleRefused(f"unknown protocol {arg}", pos)
        elif name == "MARK":
            if len(self.metastack) >= lim.max_depth:
                raise PickleRefused(f"more than {lim.max_depth} nested MARKs", pos)
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "STOP":
            self.top(pos)
            if self.metastack or len(self.stack) != 1:
                raise PickleDamaged("STOP with unfinished work on the stack", pos)
            self.result = self.stack.pop()
            self.stopped = True
        elif name == "EMPTY_DICT":
            self.push({}, pos)
        elif name == "EMPTY_LIST":
            self.push([], pos)
        elif name == "EMPTY_TUPLE":
            self.push((), pos)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            self.top(pos, n)
            last = tuple(self.stack[-n:])
            del self.stack[-n:]
            self.push(last, pos)
        elif name == "TUPLE":
            self.push(tuple(self.pop_mark(pos)), pos)
        elif name == "LIST":
            self.push(self.pop_mark(pos), pos)
        elif name == "DICT":
            items = self.pop_mark(pos)
            self.push(_pairs_into({}, items, pos), pos)
        elif name == "APPEND":
            self.top(pos, 2)
            value = self.stack.pop()
            _list(self.stack[-1], pos).append(value)
        elif name == "APPENDS":
            items = self.pop_mark(pos)
            self.top(pos)
            _list(self.stack[-1], pos).extend(items)
        elif name == "SETITEM":
            self.top(pos, 3)
            value, key = self.stack.pop(), self.stack.pop()
            _pairs_into(_dict(self.stack[-1], pos), [key, value], pos)
        elif name == "SETITEMS":
            items = self.pop_mark(pos)
            self.top(pos)
            _pairs_into(_dict(self.stack[-1], pos), items, pos)
        elif name == "POP":
            if self.stack:
                self.stack.pop()
            else:
                self.pop_mark(pos)
        elif name == "POP_MARK":
            self.pop_mark(pos)
        elif name == "DUP":
            self.top(pos)
            self.push(self.stack[-1], pos)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self.top(pos)
            index = len(self.memo) if name == "MEMOIZE" else int(arg)
            if not 0 <= index < lim.max_memo or len(self.memo) >= lim.max_memo:
                raise PickleRefused(f"memo beyond {lim.max_memo} entries", pos)
            self.memo[index] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise PickleDamaged(f"memo entry {arg} was never stored", pos)
            self.push(self.memo[int(arg)], pos)
        else:
            raise PickleRefused(f"opcode {name} is not allowed", pos)


def _list(obj: Any, pos: int) -> list[Any]:
    if type(obj) is not list:
        raise PickleDamaged(f"appending to a {type(obj).__name__}", pos)
    return obj


def _dict(obj: Any, pos: int) -> dict[Any, Any]:
    if type(obj) is not dict:
        raise PickleDamaged(f"setting items of a {type(obj).__name__}", pos)
    return obj


def _hashable(key: Any) -> bool:
    if isinstance(key, SCALARS):
        return True
    return type(key) is tuple and all(_hashable(k) for k in key)


def _pairs_into(target: dict[Any, Any], items: list[Any], pos: int) -> dict[Any, Any]:
    if len(items) % 2:
        raise PickleDamaged("an odd number of items for a dict", pos)
    for i in range(0, len(items), 2):
        if not _hashable(items[i]):
            raise PickleDamaged(f"a {type(items[i]).__name__} as a dict key", pos)
        target[items[i]] = items[i + 1]
    return target


def _check(value: Any, limits: Limits) -> None:
    """Refuse a result that refers to itself, nests deeper than allowed, or has more
    elements than allowed (counting shared parts each time they are reached)."""
    seen = 0
    path: set[int] = set()
    work: list[tuple[Any, int, bool]] = [(value, 1, False)]
    while work:
        obj, depth, leaving = work.pop()
        if leaving:
            path.discard(id(obj))
            continue
        seen += 1
        if seen > limits.max_items:
            raise PickleRefused(f"the result has more than {limits.max_items} elements")
        if isinstance(obj, SCALARS):
            continue
        if depth > limits.max_depth:
            raise PickleRefused(f"the result nests deeper than {limits.max_depth}")
        if id(obj) in path:
            raise PickleRefused("the result refers to itself")
        path.add(id(obj))
        work.append((obj, depth, True))
        children = [x for kv in obj.items() for x in kv] if type(obj) is dict else obj
        work.extend((c, depth + 1, False) for c in children)


def _run(data: bytes, limits: Limits, strict: bool) -> tuple[_Machine, PickleDamaged | None, int]:
    """Run the machine over `data`; returns it, the damage that stopped it, and the
    offset reached. Refusals raise; so does an unknown opcode byte when `strict` (else it
    is damage: what a file cut short and padded with zeros looks like)."""
    if len(data) > limits.max_bytes:
        raise PickleRefused(f"{len(data)} bytes is more than the limit of {limits.max_bytes}")
    machine = _Machine(limits)
    pos = 0
    try:
        for op, arg, at in pickletools.genops(io.BytesIO(data)):
            pos = at if at is not None else pos
            machine.step(op.name, arg, pos)
            if machine.stopped:
                end = pos + 1
                if end != len(data):
                    return machine, PickleDamaged(f"{len(data) - end} bytes after STOP", end), end
                return machine, None, end
    except PickleDamaged as exc:
        return machine, exc, pos
    except PickleRefused:
        raise
    except (ValueError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        # genops: a truncated argument, an unknown opcode byte, a bad text literal
        text = str(exc)
        if strict and "unknown" in text and "opcode" in text:
            raise PickleRefused(f"unknown opcode: {text}") from None
        damage = PickleDamaged(f"unreadable: {text}")
        damage.eof = "remain" in text or "exhausted" in text
        return machine, damage, pos
    damage = PickleDamaged("the pickle ends before STOP", len(data))
    damage.eof = True
    return machine, damage, len(data)


_NOT_FAST = object()


def _fast(data: bytes, limits: Limits) -> Any:
    """The value of a complete pickle made only of the opcodes serde_pickle writes (and a
    few more scalars), read in one tight loop; `_NOT_FAST` for anything else, which the
    general walker then reads (or refuses). Several times faster than the walker on
    chromadb's index_metadata.pickle.

    The opcodes taken: PROTO (0-5), FRAME, EMPTY_DICT, EMPTY_LIST, MARK, SETITEMS,
    APPENDS, BINUNICODE, SHORT_BINUNICODE, BININT, BININT1, BININT2, BINFLOAT, NONE,
    NEWTRUE, NEWFALSE, STOP: a strict subset of what `_Machine` allows, decoded as
    `pickletools` decodes them. Without memo or DUP no object is reachable twice, so
    the result cannot refer to itself; it has as many elements as opcodes pushed, fewer
    than its bytes (a pickle of more bytes than `max_items` is left to the walker); it
    nests no deeper than the containers made (fewer than `max_depth`): `_check` has
    nothing to find. Every anomaly (another opcode, a cut argument, bytes after STOP, a
    bad text, a limit) gives up, and the walker decides."""
    n = len(data)
    if n > limits.max_bytes or n > limits.max_items or n < 2 or data[-1] != 0x2E:  # "."
        return _NOT_FAST
    u4, i4, u2, f8 = _U4, _I4, _U2, _F8
    stack: list[Any] = []
    push = stack.append
    marks: list[list[Any]] = []
    containers = pos = 0
    try:
        while pos < n:
            op = data[pos]
            if op == 0x58:  # X BINUNICODE, most often followed by J BININT
                end = pos + 5 + u4(data, pos + 1)[0]
                if end > n:
                    return _NOT_FAST
                push(str(data[pos + 5 : end], "utf-8", "surrogatepass"))
                pos = end
                if pos + 5 <= n and data[pos] == 0x4A:
                    push(i4(data, pos + 1)[0])
                    pos += 5
            elif op == 0x4A:  # J BININT
                push(i4(data, pos + 1)[0])
                pos += 5
            elif op == 0x4B:  # K BININT1
                push(data[pos + 1])
                pos += 2
            elif op == 0x4D:  # M BININT2
                push(u2(data, pos + 1)[0])
                pos += 3
            elif op == 0x8C:  # SHORT_BINUNICODE
                end = pos + 2 + data[pos + 1]
                if end > n:
                    return _NOT_FAST
                push(str(data[pos + 2 : end], "utf-8", "surrogatepass"))
                pos = end
            elif op == 0x47:  # G BINFLOAT
                push(f8(data, pos + 1)[0])
                pos += 9
            elif op == 0x4E:  # N NONE
                push(None)
                pos += 1
            elif op == 0x88 or op == 0x89:  # NEWTRUE, NEWFALSE
                push(op == 0x88)
                pos += 1
            elif op == 0x28:  # ( MARK
                if len(marks) >= limits.max_depth:
                    return _NOT_FAST
                marks.append(stack)
                stack = []
                push = stack.append
                pos += 1
            elif op == 0x75 or op == 0x65:  # u SETITEMS, e APPENDS
                if not marks:
                    return _NOT_FAST
                items, stack = stack, marks.pop()
                push = stack.append
                if not stack:
                    return _NOT_FAST
                target = stack[-1]
                if op == 0x65:
                    if type(target) is not list:
                        return _NOT_FAST
                    target.extend(items)
                else:
                    keys = items[0::2]
                    if type(target) is not dict or len(items) % 2:
                        return _NOT_FAST
                    if not all(type(k) in _KEY_TYPES for k in keys):
                        return _NOT_FAST
                    target.update(zip(keys, items[1::2], strict=True))
                pos += 1
            elif op == 0x7D or op == 0x5D:  # } EMPTY_DICT, ] EMPTY_LIST
                containers += 1
                if containers >= limits.max_depth:
                    return _NOT_FAST
                push({} if op == 0x7D else [])
                pos += 1
            elif op == 0x80:  # PROTO
                if data[pos + 1] > 5:
                    return _NOT_FAST
                pos += 2
            elif op == 0x95:  # FRAME
                pos += 9
            elif op == 0x2E:  # . STOP
                if pos != n - 1 or marks or len(stack) != 1:
                    return _NOT_FAST
                return stack[0]
            else:
                return _NOT_FAST
    except (UnicodeDecodeError, ValueError, IndexError, struct.error):
        return _NOT_FAST  # a text that does not decode, an argument cut short
    return _NOT_FAST


_U4 = struct.Struct("<I").unpack_from
_I4 = struct.Struct("<i").unpack_from
_U2 = struct.Struct("<H").unpack_from
_F8 = struct.Struct(">d").unpack_from
_KEY_TYPES = (str, int, float, bool, type(None))


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The plain data a complete pickle holds. Raises PickleRefused (forbidden content,
    limits) or PickleDamaged (truncated, garbled)."""
    value = _fast(data, limits)
    if value is not _NOT_FAST:
        return value
    machine, damage, _ = _run(data, limits, strict=True)
    if damage is not None:
        raise damage
    _check(machine.result, limits)
    return machine.result


@dataclass(frozen=True)
class Prefix:
    """What a possibly damaged pickle holds before its damage."""

    value: Any
    """The outermost object, holding every item completed before the damage (None when
    not even that was read)."""
    complete: bool
    """The pickle parsed to its STOP: `value` is exactly what it holds."""
    error: str | None
    """Why parsing stopped early."""
    offset: int
    """Byte offset reached."""


def parse_prefix(data: bytes, limits: Limits = DEFAULT_LIMITS, pending: bool = False) -> Prefix:
    """Parse as far as the pickle is intact (forbidden content still raises
    PickleRefused; an unknown opcode byte here is damage).

    Trailing NUL bytes are cut off first: a pickle never ends in one, and a file that was
    extended but never written reads as zeros, which could otherwise complete a cut-off
    argument with wrong bytes. When the bytes turn into garbage rather than simply
    ending, the last object read before the damage is dropped for the same reason (other
    garbage that happens to decode is not detected: the caller checks the shape).

    Items already added to a container are kept. With `pending`, items read after a
    MARK whose closing opcode was never reached are also given to the container just
    below that MARK (pairs to a dict, a trailing key without its value dropped;
    elements to a list). That is exact for writers that use MARK only to batch a
    container's items, as chromadb's serde_pickle does for its dicts of scalars."""
    value = _fast(data, limits)
    if value is not _NOT_FAST:
        return Prefix(value, True, None, len(data))
    body = data.rstrip(b"\0")
    machine, damage, offset = _run(body, limits, strict=False)
    if damage is None:
        if len(body) != len(data):
            damage = PickleDamaged(f"{len(data) - len(body)} NUL bytes after STOP", len(body))
        else:
            _check(machine.result, limits)
            return Prefix(machine.result, True, None, offset)
    if not damage.eof and machine.last is not None:
        stack, size = machine.last
        if stack is machine.stack and len(stack) == size:
            stack.pop()
    items = machine.stack
    while machine.metastack:
        parent = machine.metastack.pop()
        receiver = parent[-1] if parent else None
        if pending and type(receiver) is dict:
            for i in range(0, len(items) - 1, 2):
                if _hashable(items[i]):
                    receiver[items[i]] = items[i + 1]
        elif pending and type(receiver) is list:
            receiver.extend(items)
        items = parent
    value = items[0] if items else None
    if isinstance(value, dict) and len(items) > 1 and pending:
        for i in range(1, len(items) - 1, 2):  # SETITEM-style pairs left on the bottom stack
            if _hashable(items[i]):
                value[items[i]] = items[i + 1]
    _check(value, limits)
    return Prefix(value, False, str(damage), offset)
