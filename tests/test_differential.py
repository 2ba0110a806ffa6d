"""The compiled twins against the pure ones: same results and same errors for any input.

Random and adversarial inputs (captured requests cut at random places, mutated
headers, random JSON bodies, garbage) go through both implementations; the
outcomes, results or exceptions, are compared by value and by ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from infrakit_instance import _codec_py, _http_py, _rpc_py
from infrakit_instance._rpc_py import QUICK_DEPTH
from infrakit_instance.plugin import Plugin
from infrakit_instance.rpc import Dispatcher
from test_http import CHUNKED, POST, WIRE_REQUESTS

pytestmark = pytest.mark.compiled
_http_c, _rpc_c, _codec_c, _conn_c, _batch_c, _state_c = impls.compiled_modules()

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def norm(x: Any) -> Any:
    """A value to compare across implementations (their classes are distinct)."""
    if isinstance(x, (list, tuple)):
        return type(x).__name__, [norm(i) for i in x]
    if x is _http_c.CONTINUE or x is _http_py.CONTINUE:
        return "CONTINUE", repr(x)
    if isinstance(x, (_http_c.Request, _http_py.Request)):
        return (
            "Request",
            x.method,
            x.path,
            x.content_type,
            x.keep_alive,
            x.body,
            x.host,
            x.origin,
            x.authorization,
            repr(x),
        )
    if isinstance(x, (_rpc_c.Call, _rpc_py.Call)):
        return "Call", x.method, x.params, x.id_json, repr(x)
    if isinstance(x, BaseException):
        attrs = {k: getattr(x, k) for k in ("status", "code", "message", "id_json") if hasattr(x, k)}
        return "raised", type(x).__name__, str(x), repr(x), x.args, attrs
    return "value", type(x).__name__, x


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return norm(fn(*args))
    except Exception as exc:  # the exception is the outcome being compared
        return norm(exc)


def same(fn_c: Callable[..., Any], fn_py: Callable[..., Any], *args: Any) -> Any:
    got_c, got_py = outcome(fn_c, *args), outcome(fn_py, *args)
    assert got_c == got_py
    return got_c


# -- HTTP framing ----------------------------------------------------------------------

SAMPLES = [*WIRE_REQUESTS.values(), POST, CHUNKED]


def feed_pieces(module: Any, pieces: list[bytes], **limits: int) -> list[Any]:
    """Everything a parser reports for each piece, and whether it was idle after it."""
    parser = module.HttpParser(**limits)
    return [(norm(parser.feed(p)), parser.idle, parser.buffered, parser.in_body) for p in pieces]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@SETTINGS
@given(
    st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_random_splits_of_real_requests(requests: list[bytes], points: list[int]) -> None:
    pieces = cut(b"".join(requests), points)
    got = feed_pieces(_http_c, pieces)
    assert got == feed_pieces(_http_py, pieces)
    assert sum(len(items[1]) for items, *_ in got) == len(requests)


_NAMES = st.sampled_from(
    [
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"TRANSFER-ENCODING",
        b"Content-Type",
        b"Connection",
        b"Expect",
        b"Host",
        b"X-Other",
        b"Bad Name",
        b"",
        b"Content-Length ",
        b"\tExpect",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            b"0",
            b"2",
            b"13",
            b"-1",
            b"+2",
            b" 2 ",
            b"99999999999999999999",
            b"chunked",
            b"Chunked",
            b"gzip, chunked",
            b"identity,chunked",
            b"chunked, ",
            b"\x0bchunked\x0c",
            b"close",
            b"keep-alive",
            b"Keep-Alive, close",
            b"upgrade,  KEEP-ALIVE",
            b"100-continue",
            b"100-Continue ",
            b"application/json",
            b"",
            b"\r",
        ]
    ),
    st.binary(max_size=12).filter(lambda v: b"\n" not in v),
)
_LINES = st.one_of(
    st.sampled_from(
        [
            b"POST / HTTP/1.1",
            b"GET /info/api.json HTTP/1.1",
            b"POST / HTTP/1.0",
            b"POST / HTTP/2.0",
            b"POST / HTTP/1.x",
            b"POST  HTTP/1.1",
            b"POST / HTTP/1.1 x",
            b"P(ST / HTTP/1.1",
            b"POST / HTTP/1.1\r\r",
        ]
    ),
    st.binary(max_size=20).filter(lambda v: b"\n" not in v),
)
_BODIES = st.one_of(
    st.sampled_from(
        [
            b"{}",
            b'{"jsonrpc":"2.0"}',
            b"2\r\n{}\r\n0\r\n\r\n",
            b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"zz\r\n",
            b"3\r\nabcX",
            b"0\n\n",
        ]
    ),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [draw(_LINES)]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(_NAMES) + draw(st.sampled_from([b":", b": ", b":\t", b""])) + draw(_VALUES))
    return draw(st.sampled_from([b"", b"\r\n"])) + eol.join(lines) + eol + eol + draw(_BODIES)


@SETTINGS
@given(
    st.lists(requests(), min_size=1, max_size=3),
    st.lists(st.integers(min_value=0), max_size=6),
    st.sampled_from([{}, {"max_body": 3}, {"max_header": 40}, {"max_body": 0, "max_header": 0}]),
)
def test_mutated_requests(reqs: list[bytes], points: list[int], limits: dict[str, int]) -> None:
    pieces = cut(b"".join(reqs), points)
    assert feed_pieces(_http_c, pieces, **limits) == feed_pieces(_http_py, pieces, **limits)


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_garbage_bytes(pieces: list[bytes]) -> None:
    assert feed_pieces(_http_c, pieces) == feed_pieces(_http_py, pieces)
    prefixed = [b"POST / HTTP/1.1\r\n", *pieces]
    assert feed_pieces(_http_c, prefixed) == feed_pieces(_http_py, prefixed)


@SETTINGS
@given(
    st.one_of(st.integers(-5, 1200), st.booleans(), st.text(max_size=3)),
    st.one_of(st.binary(max_size=30), st.text(max_size=5)),
    st.one_of(st.booleans(), st.none(), st.integers(0, 1)),
    st.one_of(st.sampled_from([b"application/json", b"text/plain"]), st.binary(max_size=10)),
    st.binary(max_size=30),
)
def test_build_response(status: Any, body: Any, keep_alive: Any, content_type: bytes, extra: bytes) -> None:
    same(_http_c.build_response, _http_py.build_response, status, body, keep_alive, content_type, extra)


# -- JSON-RPC envelope -----------------------------------------------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["jsonrpc"] = draw(st.one_of(st.just("2.0"), _JSON_SCALARS))
    if draw(st.booleans()):
        doc["method"] = draw(st.one_of(st.sampled_from(["Instance.Provision", "Plugin.Implements"]), _JSON_SCALARS))
    if draw(st.booleans()):
        doc["params"] = draw(
            st.one_of(st.dictionaries(st.text(max_size=5), _JSON, max_size=2), st.lists(_JSON, max_size=2), _JSON)
        )
    if draw(st.booleans()):
        doc["id"] = draw(st.one_of(st.integers(min_value=-(2**80), max_value=2**80), _JSON))
    return doc


def _text(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits
        import json

        return json.dumps(doc, separators=(",", ":")).encode()


def _envelope(rpc: Any) -> Callable[[bytes], Any]:
    def run(body: bytes) -> Any:
        doc = rpc.decode_body(body)
        if isinstance(doc, list):
            return [outcome(rpc.split_call, d) for d in doc]
        return rpc.split_call(doc)

    return run


@SETTINGS
@given(st.one_of(envelopes(), st.lists(envelopes(), max_size=3), _JSON))
def test_random_json_bodies(doc: Any) -> None:
    same(_envelope(_rpc_c), _envelope(_rpc_py), _text(doc))


@SETTINGS
@given(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode)))
def test_garbage_bodies(body: bytes) -> None:
    same(_envelope(_rpc_c), _envelope(_rpc_py), body)


@SETTINGS
@given(st.one_of(_JSON, st.integers(), st.text(), st.tuples(st.integers())))
def test_encode_id(value: Any) -> None:
    same(_rpc_c.encode_id, _rpc_py.encode_id, value)


@SETTINGS
@given(
    st.one_of(st.binary(max_size=20), st.text(max_size=3)),
    st.one_of(st.integers(), st.booleans(), st.text(max_size=3)),
    st.one_of(st.text(), st.binary(max_size=5), st.none()),
)
def test_encode_answers(id_json: Any, code: Any, message: Any) -> None:
    same(_rpc_c.encode_error, _rpc_py.encode_error, id_json, code, message)
    same(_rpc_c.encode_result, _rpc_py.encode_result, id_json, message)


# -- codec -----------------------------------------------------------------------------

_STR = st.one_of(st.text(max_size=12), st.text(alphabet="abcXYZ.-_/ 09", max_size=12))


class Rec:
    def __init__(self, brief: Any, spec: Any) -> None:
        self.brief = brief
        self.spec = spec


@SETTINGS
@given(
    st.one_of(_STR, st.integers()),
    st.one_of(st.none(), _STR, st.integers()),
    st.one_of(st.dictionaries(_STR, _STR, max_size=5), st.dictionaries(_STR, _JSON, max_size=2), _JSON),
)
def test_encode_brief(instance_id: Any, logical_id: Any, tags: Any) -> None:
    same(_codec_c.encode_brief, _codec_py.encode_brief, instance_id, logical_id, tags)


_PIECE = st.one_of(st.binary(max_size=20), st.none(), st.text(max_size=3), st.builds(bytearray, st.binary(max_size=5)))


@SETTINGS
@given(st.lists(st.tuples(_PIECE, _PIECE), max_size=6), st.booleans())
def test_element_and_join(pairs: list[tuple[Any, Any]], properties: bool) -> None:
    for brief, spec in pairs:
        same(_codec_c.element, _codec_py.element, brief, spec)
    records = [Rec(b, s) for b, s in pairs]
    same(_codec_c.join_descriptions, _codec_py.join_descriptions, records, properties)
    same(_codec_c.describe_result, _codec_py.describe_result, *(pairs[0] if pairs else (b"", b"")))


@SETTINGS
@given(
    st.one_of(st.binary(max_size=10), st.text(max_size=2)),
    st.one_of(st.lists(st.binary(max_size=12), max_size=4), st.lists(_PIECE, max_size=3)),
    st.one_of(st.lists(st.binary(max_size=12), max_size=6), st.lists(_PIECE, max_size=3)),
)
def test_encode_document(provider: Any, nonfunctional: Any, instances: Any) -> None:
    same(_codec_c.encode_document, _codec_py.encode_document, provider, nonfunctional, instances)
    # Any iterables; each implementation gets its own iterator.
    assert outcome(_codec_c.encode_document, provider, tuple(nonfunctional), iter(instances)) == outcome(
        _codec_py.encode_document, provider, tuple(nonfunctional), iter(instances)
    )


@SETTINGS
@given(st.one_of(_JSON, st.binary(max_size=20).map(lambda b: {"b": b.hex()})), st.binary(max_size=30))
def test_spec_and_json_checks(spec: Any, data: bytes) -> None:
    same(_codec_c.encode_spec, _codec_py.encode_spec, spec)
    same(_codec_c.is_json, _codec_py.is_json, data)
    same(_codec_c.is_json, _codec_py.is_json, _text(spec))


# -- JSON validation and state-file lines --------------------------------------------------
#
# The compiled ``is_json`` is a validator of its own, the pure one asks orjson:
# JSON-ish byte soup (tokens, escapes, surrogates, bad UTF-8, numbers at the
# edge of the double range, deep nesting) must get the same answer from both.

# fmt: off
_JSON_TOKENS = st.sampled_from(
    [
        b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"d800", b"DC00", b"\\ud83d\\ude00",
        b"\\ud800", b"\\udc00", b"\\n", b"\\/", b"\\x", b"0", b"1", b"9", b"-", b".", b"e", b"E", b"+",
        b"true", b"false", b"null", b"tru", b" ", b"\n", b"\t", b"\r", b"\x0c", b"\x00", b"\x1f", b"\x7f",
        b"\xc3\xa9", b"\xed\xa0\x80", b"\xff", b"\xf0\x9f\x98\x80", b"\xe0\x9f\xbf", b"\xf4\x90\x80\x80",
        b"\xc3", b"\xef\xbb\xbf", b"a", b'"k":', b'"v"', b"00", b"1e308", b"9e308", b"1e309", b"1e-400",
        b"1.7976931348623157e308", b"1.7976931348623159e308", b"18446744073709551616",
    ]
)
# fmt: on
_SOUP = st.lists(_JSON_TOKENS, max_size=16).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes or tokens deleted, inserted or cut off."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["delete", "insert", "cut"]))
        if op == "delete":
            del data[i : i + 1]
        elif op == "insert":
            data[i:i] = draw(st.one_of(_JSON_TOKENS, st.binary(min_size=1, max_size=2)))
        else:
            del data[i:]
    return bytes(data)


@st.composite
def big_numbers(draw: st.DrawFn) -> bytes:
    """Numbers whose magnitude is near the largest double, written every which way."""
    digits = str(2**1024 - 2**970 + draw(st.integers(-(2**972), 2**972)))
    shift = draw(st.integers(-60, 60))
    if shift > 0:  # a fraction and a larger exponent for the same value
        digits = digits[:-shift] + "." + digits[-shift:] + f"e{shift}"
    elif shift < 0:  # leading zeros and a larger exponent
        digits = "0." + "0" * -shift + digits + f"e{len(digits) - shift}"
    return (draw(st.sampled_from(["", "-"])) + digits).encode()


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Arrays and objects around the depth limit (1024)."""
    depth = draw(st.integers(1015, 1030))
    kinds = draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
    inner = draw(st.sampled_from([b"1", b"[]", b"{}", b'"s"', b""]))
    opens = b"".join(b'{"k":' if k else b"[" for k in kinds)
    closes = b"".join(b"}" if k else b"]" for k in reversed(kinds))
    return opens + inner + closes[: draw(st.sampled_from([len(closes), len(closes) - 1]))]


@SETTINGS
@given(
    st.one_of(
        _SOUP,
        mutated(st.one_of(_JSON.map(_text), st.just(b'{"a":[1,2.5e3,-0.0,"x\\u00e9\\ud83d\\ude00"]}'))),
        mutated(_SOUP),
        big_numbers(),
        nested(),
        st.binary(max_size=30),
        st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_is_json(data: bytes) -> None:
    assert same(_codec_c.is_json, _codec_py.is_json, data)[2] in (True, False)


@SETTINGS
@given(st.one_of(st.text(max_size=8), st.builds(bytearray, _SOUP), st.builds(memoryview, _SOUP), st.integers()))
def test_is_json_other_types(data: Any) -> None:
    same(_codec_c.is_json, _codec_py.is_json, data)


_TAG_TEXT = st.one_of(
    st.sampled_from(["infrakit.group", "role", "g0", "worker", "", "Properties", ',"Properties":', "x" * 70]),
    st.text(max_size=8),
)


@st.composite
def element_lines(draw: st.DrawFn) -> bytes:
    """A state-file line: mostly as our writer writes it, often bent out of shape."""
    desc: dict[str, Any] = {
        "ID": draw(st.sampled_from(["instance-1", "i-2", None, 1]) if draw(st.booleans()) else _TAG_TEXT),
        "LogicalID": draw(st.one_of(st.none(), _TAG_TEXT, st.just(1))),
        "Tags": draw(st.dictionaries(_TAG_TEXT, _TAG_TEXT, max_size=4) if draw(st.integers(0, 5)) else _JSON),
    }
    if draw(st.integers(0, 19)) == 0:
        desc["X"] = 1
    if draw(st.integers(0, 19)) == 0:
        del desc[draw(st.sampled_from(sorted(desc)))]
    if draw(st.booleans()):
        desc = dict(draw(st.permutations(list(desc.items()))))
    try:
        brief = orjson.dumps(desc)
    except TypeError:
        brief = b"{}"
    if draw(st.integers(0, 9)) == 0:
        brief = brief.replace(b":", b": ").replace(b",", b" ,")
    if draw(st.integers(0, 3)):
        bad = st.one_of(_SOUP, st.sampled_from([b"", b"1e400", b'"\\ud800"', b"{}}"]))
        spec = draw(_JSON.map(_text) if draw(st.integers(0, 3)) else bad)
        brief = brief[:-1] + b',"Properties":' + spec + b"}"
    line = (
        draw(st.sampled_from([b""] * 7 + [b" "]))
        + brief
        + draw(st.sampled_from([b"", b" ", b"   "]))
        + draw(st.sampled_from([b"", b",", b" ,", b", "]))
        + draw(st.sampled_from([b"", b"\n", b"\n", b" \n", b"\n\n"]))
    )
    return draw(mutated(st.just(line))) if draw(st.integers(0, 3)) == 0 else line


def _parse_outcome(module: Any, line: Any) -> Any:
    got = outcome(module.parse_element, line)
    if got[0] == "value" and got[2] is not None:  # the types of the parts too (norm compares values)
        return got, [type(x).__name__ for x in got[2]]
    return got


@SETTINGS
@given(
    st.one_of(
        element_lines(),
        st.lists(st.sampled_from([b" ", b",", b"\n", b"{", b"}", b'"', b"a", b"\xff"]), max_size=10).map(b"".join),
        st.binary(max_size=40),
    )
)
def test_parse_element(line: bytes) -> None:
    assert _parse_outcome(_codec_c, line) == _parse_outcome(_codec_py, line)


@SETTINGS
@given(st.one_of(st.text(max_size=8), st.builds(bytearray, st.binary(max_size=8)), st.none(), st.integers()))
def test_parse_element_other_types(line: Any) -> None:
    same(_codec_c.parse_element, _codec_py.parse_element, line)


# -- the body scanner: ids, Spec text, depth -----------------------------------------------

_SCAN_BYTES = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b'"',
            b"\\",
            b" ",
            b"\n",
            b"1",
            b"-0",
            b"1e2",
            b'"id"',
            b'"params"',
            b'"Spec"',
            b"null",
            b'"a\\"b"',
        ]
    ),
    max_size=40,
).map(b"".join)


@SETTINGS
@given(
    st.one_of(_SCAN_BYTES, st.binary(max_size=40), envelopes().map(_text), st.lists(envelopes(), max_size=3).map(_text))
)
def test_scan(body: bytes) -> None:
    same(_rpc_c.scan, _rpc_py.scan, body)
    same(_rpc_c.decode_body, _rpc_py.decode_body, body)


@SETTINGS
@given(st.integers(100, 400), st.sampled_from([b"1", b"1.5", b'"x"', b"[]", b"1x"]), st.booleans())
def test_deep_bodies(depth: int, ident: bytes, spec: bool) -> None:
    inner = b"[" * depth + b"]" * depth
    if spec:
        body = b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{"Spec":%s},"id":%s}' % (inner, ident)
    else:
        body = b'{"id":%s,"x":%s}' % (ident, inner)
    got = same(_rpc_c.decode_body, _rpc_py.decode_body, body)
    total = depth + (2 if spec else 1)
    assert same(_rpc_c.scan, _rpc_py.scan, body)[1][0][2] == total
    if total > _rpc_py.MAX_DEPTH:
        assert got[0] == "raised" and got[5]["code"] == _rpc_py.INVALID_PARAMS
        assert got[5]["id_json"] == (ident if ident in (b"1", b"1.5", b'"x"') else b"null")


@SETTINGS
@given(st.one_of(_SCAN_BYTES, st.binary(max_size=40), _JSON.map(lambda d: json.dumps(d, indent=1).encode())))
def test_compact(text: bytes) -> None:
    got = same(_rpc_c.compact, _rpc_py.compact, text)
    if b'"' not in text:
        assert got[2] == text.translate(None, b" \t\r\n")


_PLAIN_PIECES = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b" ", b"-", b"0", b"7", b"1234567", b".", b"e", b"E"]
        + [b"n", b"t", b"u", b"/", b"\n"]
    ),
    max_size=60,
).map(b"".join)


@SETTINGS
@given(st.one_of(_PLAIN_PIECES, st.binary(max_size=60), _JSON.map(lambda d: json.dumps(d, indent=1).encode())))
def test_plain_text(text: bytes) -> None:
    # The compiled pass and the pure regex agree; and a Spec judged plain is written back
    # by orjson as exactly its compacted text, which is what lets the dispatcher skip
    # locating that text.
    got = same(_rpc_c.plain_text, _rpc_py.plain_text, text)
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return
    if got[2] and not (isinstance(doc, dict) and len(doc) < text.count(b":")):  # duplicate keys aside
        assert orjson.dumps(doc) == _rpc_py.compact(text)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        (b'{"a":1,"b":[true,false,null],"c":"x y"}', True),
        (b'{"a":123456789012345}', True),
        (b'{"a":1234567890123456789}', True),
        (b'{"a":12345678901234567890}', False),
        (b'{"a":-1234567890123456789}', False),
        (b'{"a":-123456789012345678}', True),
        (b'{"a":"x\\ny\\t\\"\\\\"}', True),
        (b'{"a":"\\/"}', False),
        (b'{"a":"\\\\u"}', True),
        (b'{"a":"\\\\\\u0041"}', False),
        (b'{"a":1.5}', False),
        (b'{"a":1e3}', False),
        (b'{"a":2E3}', False),
        (b'{"a":-0}', False),
        (b'{"a":-1}', True),
        (b'{"a":"\\u00e9"}', False),
        (b'"a\\', False),
        (b'{"true":true,"false":false}', True),
        (b'{"jsonrpc":"2.0","v":"1e5 -0 12345678901234567890"}', True),
        (b'{"a":"x"\\}', False),
        (b'{"a":"x}', False),
    ],
)
def test_plain_text_cases(text: bytes, plain: bool) -> None:
    assert _rpc_c.plain_text(text) is plain
    assert _rpc_py.plain_text(text) is plain


# -- quick: fixed answers read without the dispatcher ------------------------------------

_PLUGIN = Plugin(None)  # type: ignore[arg-type]  # handshakes and Validate never reach the store
_QUICK = _PLUGIN.quick_answers()
_SLOW = Dispatcher(_PLUGIN.methods)
_QUICK_METHODS = [m.decode() for m, _, _ in _QUICK]
# What the compiled twin reads itself: ASCII without escapes, numbers in orjson's range.
_PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), max_size=8)
_PLAIN_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**18), max_value=10**18),
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e50, max_value=1e50).filter(
            lambda x: x == 0 or abs(x) > 1e-90  # an exponent of at most two digits
        ),
        _PLAIN_TEXT,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_PLAIN_TEXT, inner, max_size=3)),
    max_leaves=8,
)


def _slow(body: bytes) -> Any:
    return _SLOW.handle(body)


def _quick_outcomes(body: bytes) -> tuple[Any, Any, Any]:
    """Each twin's quick answer, and the dispatcher's; each quick one is None or the dispatcher's."""
    slow = _slow(body)
    got_c, got_py = _rpc_c.quick(body, _QUICK), _rpc_py.quick(body, _QUICK)
    assert got_c is None or got_c == slow, (body, got_c, slow)
    assert got_py is None or got_py == slow, (body, got_py, slow)
    return got_c, got_py, slow


@st.composite
def plain_requests(draw: st.DrawFn) -> bytes:
    """A request quick() answers: a fixed-answer method, an id, params of no or an empty Type,
    keys in any order, whitespace anywhere JSON allows it."""
    method = draw(st.sampled_from(_QUICK_METHODS))
    params: dict[str, Any] = draw(st.dictionaries(_PLAIN_TEXT.filter(lambda k: k != "Type"), _PLAIN_JSON, max_size=3))
    if method == "Instance.Validate" or draw(st.booleans()):
        kind = draw(st.sampled_from(["absent", "", None]))
        if kind != "absent":
            params["Type"] = kind
    members = {
        "jsonrpc": "2.0",
        "method": method,
        "id": draw(st.one_of(st.none(), st.integers(-(2**63), 10**19 - 1), _PLAIN_TEXT)),
    }
    if draw(st.booleans()):
        members["params"] = draw(st.sampled_from([params, None])) if draw(st.booleans()) else params
    if draw(st.booleans()):
        members[draw(_PLAIN_TEXT.filter(lambda k: k not in members))] = draw(_PLAIN_JSON)
    order = draw(st.permutations(list(members)))
    space = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
    text = "{" + ",".join(
        f"{draw(space)}{json.dumps(k)}{draw(space)}:{draw(space)}{json.dumps(members[k])}" for k in order
    )
    return (text + draw(space) + "}" + draw(space)).encode()


@SETTINGS
@given(plain_requests())
def test_quick_answers_every_plain_request_as_the_dispatcher_does(body: bytes) -> None:
    got_c, got_py, slow = _quick_outcomes(body)
    assert got_c == got_py == slow, body


@SETTINGS
@given(st.one_of(envelopes(), st.lists(envelopes(), max_size=2), _JSON).map(_text))
def test_quick_on_random_bodies_is_none_or_the_dispatchers_answer(body: bytes) -> None:
    _quick_outcomes(body)


@SETTINGS
@given(plain_requests(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_quick_on_damaged_requests_is_none_or_the_dispatchers_answer(body: bytes, at: int, junk: bytes) -> None:
    at = at % (len(body) + 1)
    for damaged in (body[:at], body[:at] + junk + body[at:], body[:at] + body[at + 1 :]):
        _quick_outcomes(damaged)


_V = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":%s,"id":%s}'


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_V % (b'{"Type":"x"}', b"1"), "a Type of another plugin: an error"),
        (_V % (b'{"Type":5}', b"1"), "a Type that is no string: an error"),
        (_V % (b'{"Type":"","Type":"x"}', b"1"), "Type twice"),
        (_V % (b"[{}]", b"1"), "params as an array"),
        (_V % (b'"x"', b"1"), "params of the wrong kind: an error"),
        (_V % (b"{}", b"1.0"), "a float id"),
        (_V % (b"{}", b"-0"), "an id of -0"),
        (_V % (b"{}", b"12345678901234567890"), "an id of 20 digits"),
        (_V % (b"{}", b"true"), "a bool id: an error"),
        (_V % (b'{"a":"\\u0041"}', b"1"), "an escape"),
        (_V % ('{"a":"é"}'.encode(), b"1"), "non-ASCII text"),
        (_V % (b'{"a":' + b"[" * 40 + b"]" * 40 + b"}", b"1"), "deeper than QUICK_DEPTH"),
        (_V % (b'{"a":1e400}', b"1"), "a number orjson refuses: a parse error"),
        (_V % (b"{}", b"1") + b"x", "junk after the object: a parse error"),
        (b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{}}', "a notification"),
        (b'{"jsonrpc":"2.0","method":"Instance.Provision","params":{},"id":1}', "a method that changes state"),
        (b'{"jsonrpc":"1.0","method":"Instance.Validate","params":{},"id":1}', "another version: an error"),
        (b'[{"jsonrpc":"2.0","method":"Instance.Validate","params":{},"id":1}]', "a batch"),
    ],
)
def test_quick_declines_what_the_dispatcher_must_answer(body: bytes, why: str) -> None:
    got_c, got_py, slow = _quick_outcomes(body)
    assert got_c is None, why
    if why.endswith("an error"):
        assert got_py is None, why
        assert b'"error"' in slow, why


def test_quick_reads_deep_bodies_up_to_its_depth_only() -> None:
    inner = QUICK_DEPTH - 2  # the body is level 1, params level 2: arrays fill levels 3 to QUICK_DEPTH
    fits = _V % (b'{"a":' + b"[" * inner + b"]" * inner + b"}", b"1")
    too_deep = _V % (b'{"a":' + b"[" * (inner + 1) + b"]" * (inner + 1) + b"}", b"1")
    assert _quick_outcomes(fits)[0] is not None
    assert _quick_outcomes(too_deep)[0] is None
    assert _quick_outcomes(too_deep)[1] is not None  # the pure twin answers it (orjson reads any depth)
