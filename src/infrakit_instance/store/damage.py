"""Damage in a state file of the plugin's layout: find it, tell a torn last append
from anything else, and salvage what is intact.

Files that end in a batch trailer are judged by it (:mod:`.trailer`); the rule
below is for files of the layout written before trailers.

The only damage a crash of this plugin can leave is a **torn append**: an append
batch overwrites the document's closing bytes and the padding after them, so what
is left of it lies after the last complete element, and the file still ends in
the padding the plugin always keeps there (``PAD_KEEP`` bytes at least, spaces,
or zeros where a growing file's new blocks never received their data, which
can only be that far past the document).  Only damage of that shape is cut back
at start-up.  Anything else (a flipped byte, a zeroed block, a cut in the middle,
stray bytes) stops start-up with the byte offset and how many intact instances
lie before and after it; ``state salvage`` keeps them all in a new file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import orjson

from .._impl import codec
from ..state import Record, State, StateError
from . import trailer

__all__ = ["PAD_KEEP", "Damage", "diagnose", "salvage"]

#: Bytes of padding the plugin keeps past the document after every batch.
PAD_KEEP = 8192
#: What a torn append leaves at the very end of the file, at least.
_TORN_TRAIL = 4096
_HEAD_END = b'"Instances":[\n'
_CLOSE = codec.TAIL[1:]
_WS = b" \n"


@dataclass
class Damage:
    """The first damaged place of a file, and what lies around it."""

    offset: int
    before: int  # intact elements before it
    after: int  # intact elements after it
    torn: bool  # provably what is left of the last, unacknowledged append
    repaired: bytes | None = None  # torn: the document cut back to before it
    what: str = ""

    def describe(self, path: str) -> str:
        return (
            f"state file {path} is damaged at byte {self.offset} ({self.what}):"
            f" {self.before} intact instances before it, {self.after} after it."
            " It is not what a crash can leave (a torn last append), so nothing was changed;"
            f" `infrakit-instance state salvage {path} --out NEW` writes every intact instance to a new file"
        )


@dataclass
class _Line:
    start: int
    end: int
    kind: str  # "elem", "blank", "close", "bad"
    elem_end: int = -1  # elem (or the element a bad line starts with): where the element ends
    record: tuple[Record, dict[str, str]] | None = None


@dataclass
class _Scan:
    head_end: int
    head: State
    lines: list[_Line] = field(default_factory=list)


def _leading_element(line: bytes) -> int:
    """Length of a whole element that a damaged line starts with (0: none)."""
    if not line.startswith(b"{"):
        return 0
    try:
        _, n = json.JSONDecoder().raw_decode(line.decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeError):
        return 0
    size = len(line.decode("utf-8", "surrogateescape")[:n].encode("utf-8", "surrogateescape"))
    parsed = codec.parse_element(line[:size])
    return size if parsed is not None and parsed[2] is not None else 0


def _record(line: bytes) -> tuple[Record, dict[str, str]] | None:
    parsed = codec.parse_element(line)
    if parsed is None or parsed[2] is None:
        return None
    _, _, instance_id, tags, brief, spec = parsed
    assert instance_id is not None and tags is not None and brief is not None
    return Record(instance_id, brief, spec), tags


def _head_end(data: bytes) -> int:
    """Where the line that opens the Instances array ends (-1: no such line); a
    trailer (see :mod:`.trailer`) and spaces may follow the "[" of an empty document."""
    i = data.find(_HEAD_END[:-1])
    if i < 0:
        return -1
    j = i + len(_HEAD_END) - 1
    k = data.find(b"\n", j)
    if k < 0:
        return -1
    line, _ = trailer.strip(data[j:k])
    return k + 1 if not line.strip(b" ") else -1


def _scan(data: bytes) -> _Scan | None:
    head_end = _head_end(data)
    if head_end < 0:
        return None
    try:
        head = State.from_document(orjson.loads(data[: head_end - 1] + b"]}"))
    except (orjson.JSONDecodeError, StateError):
        return None
    if head.instances:
        return None
    scan = _Scan(head_end, head)
    pos, closed = head_end, False
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = trailer.strip(data[pos:end])[0]  # a trailer is whitespace after an element's room
        if not line.strip(_WS):
            scan.lines.append(_Line(pos, end, "blank"))
        elif line == _CLOSE and not closed:
            closed = True
            scan.lines.append(_Line(pos, end, "close"))
        else:
            parsed = codec.parse_element(line)
            if parsed is None:
                n = _leading_element(line)
                rec = _record(line[:n]) if n else None
                scan.lines.append(_Line(pos, end, "bad", pos + n if n else -1, rec))
            elif parsed[2] is None:
                scan.lines.append(_Line(pos, end, "blank"))
            else:
                content = line.rstrip(b"\n").rstrip(b" ")
                size = len(content) - 1 if parsed[0] else len(content)
                scan.lines.append(_Line(pos, end, "elem", pos + size, _record(line)))
        pos = end
    return scan


def diagnose(data: bytes) -> Damage | None:
    """The first damage in a file of the plugin's layout (None: none found, or not that layout:
    the caller's JSON parse then says what is wrong)."""
    scan = _scan(data)
    if scan is None:
        return None
    lines = scan.lines
    close = next((n for n, ln in enumerate(lines) if ln.kind == "close"), None)
    if close is not None and any(ln.kind != "blank" for ln in lines[close + 1 :]):
        lines[close].kind = "bad"  # the document "ends" early: that is where the damage starts
    bad = next((n for n, ln in enumerate(lines) if ln.kind == "bad"), None)
    closed = any(ln.kind == "close" for ln in lines)
    if bad is None:
        if closed:
            return None
        # The closing bytes are missing, nothing else: what an append torn in its first bytes leaves.
        bad = len(lines)
    k = lines[bad].start if bad < len(lines) else len(data.rstrip(_WS + b"\0"))
    intact = [ln for ln in lines[:bad] if ln.kind == "elem"]
    lead = lines[bad].elem_end if bad < len(lines) else -1
    after = sum(1 for ln in lines[bad + 1 :] if ln.kind == "elem")
    before = len(intact) + (lead >= 0)
    tail = data[k:]
    trail = len(tail) - len(tail.rstrip(_WS + b"\0"))
    zero = data.find(b"\0", k)
    # A crash cut the append short: so its closing bytes (written last) never landed after it.
    closed_after = any(ln.kind == "close" for ln in lines[bad + 1 :])
    torn = after == 0 and not closed_after and trail >= _TORN_TRAIL and (zero < 0 or zero >= k + PAD_KEEP - 64)
    if bad < len(lines) and lines[bad].kind == "bad":
        what = "bytes that are no element of the Instances array"
        if b"\0" in data[lines[bad].start : lines[bad].end]:
            what = "zero bytes"
        elif bad == close:
            what = "the document closes here, but more follows"
    else:
        what = "the document is not closed"
    repaired = None
    if torn:
        cut = lead if lead >= 0 else (intact[-1].elem_end if intact else scan.head_end - 1)
        repaired = data[:cut] + codec.TAIL
    return Damage(k, before, after, torn, repaired, what)


def salvage(data: bytes) -> tuple[State, list[tuple[int, int, str]]]:
    """Every intact element of a file of the plugin's layout (before and after any damage),
    and what could not be kept: (start, end, why) byte ranges.  :class:`StateError` if the
    file is not of that layout."""
    scan = _scan(data)
    if scan is None:
        raise StateError(
            "not of the plugin's line layout (its head, up to the Instances array, does not parse):"
            " nothing can be salvaged element by element"
        )
    state, lost = scan.head, []
    for ln in scan.lines:
        if ln.kind in ("blank", "close"):
            continue
        rec = ln.record
        if ln.kind == "bad":
            if ln.elem_end >= 0 and data[ln.elem_end : ln.end].strip(_WS + b",\r\t"):
                lost.append((ln.elem_end, ln.end, "damaged bytes after an intact element"))
            elif ln.elem_end < 0:
                lost.append((ln.start, ln.end, "damaged bytes"))
        if rec is not None:
            r, tags = rec
            if state.known(r.id):
                lost.append((ln.start, ln.end, f"a second copy of instance {r.id}"))
                continue
            state.load(r, tags)
    return state, lost
