"""HTTP/1.1 request framing, under both implementations (the ``impl`` fixture)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

# The captured requests of real InfraKit clients (see wire/README.md).
WIRE = Path(__file__).resolve().parent / "wire"
_HEADER = re.compile(rb"^### .*?client->server \((\d+) bytes")


def wire_requests() -> dict[str, bytes]:
    """Exact request bytes of every capture, by file stem."""
    out = {}
    for path in sorted(WIRE.glob("*.txt")):
        data = path.read_bytes()
        first, rest = data.split(b"\n", 1)
        m = _HEADER.match(first)
        if m:
            out[path.stem] = rest[: int(m.group(1))]
    return out


WIRE_REQUESTS = wire_requests()

POST = b'POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\nContent-Type: application/json\r\n\r\n{"jsonrpc":1}'
CHUNKED = (
    b"POST /rpc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b'6 ; quoted="a;b"\r\n world\r\n'
    b"A\r\n, 10 bytes\r\n"
    b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
)


def fields(item: Any) -> tuple[Any, ...]:
    return (item.method, item.path, item.content_type, item.keep_alive, item.body)


def one(impl: Any, data: bytes, **limits: int) -> Any:
    items = impl.http.HttpParser(**limits).feed(data)
    assert len(items) == 1, items
    return items[0]


def error(impl: Any, data: bytes, **limits: int) -> tuple[int, str]:
    item = one(impl, data, **limits)
    assert isinstance(item, impl.http.HttpError), item
    return item.status, item.message


# -- Content-Length framing ----------------------------------------------------------


def test_content_length_request(impl: Any) -> None:
    req = one(impl, POST)
    assert isinstance(req, impl.http.Request)
    assert fields(req) == (b"POST", b"/", b"application/json", True, b'{"jsonrpc":1}')
    assert repr(req) == "Request(b'POST', b'/', b'application/json', True, <13 bytes>)"


def test_every_capture_is_here() -> None:
    # Both client eras, every method: a missing capture must fail, never shrink the suite.
    assert len(WIRE_REQUESTS) == 15, sorted(WIRE_REQUESTS)
    assert {name.split("-")[0] for name in WIRE_REQUESTS} == {"new", "old"}


@pytest.mark.parametrize("name", sorted(WIRE_REQUESTS))
def test_wire_requests_parse(impl: Any, name: str) -> None:
    data = WIRE_REQUESTS[name]
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert len(body) == length
    parser = impl.http.HttpParser()
    [req] = parser.feed(data)
    assert fields(req) == (b"POST", b"/", b"application/json", True, body)
    assert parser.idle


@pytest.mark.parametrize("name", sorted(WIRE_REQUESTS))
def test_wire_request_split_byte_by_byte(impl: Any, name: str) -> None:
    data = WIRE_REQUESTS[name]
    parser = impl.http.HttpParser()
    got = []
    for i in range(len(data)):
        items = parser.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert items == []
            assert not parser.idle
        got += items
    assert [fields(r) for r in got] == [fields(one(impl, data))]
    assert parser.idle


def test_no_body_and_zero_length(impl: Any) -> None:
    req = one(impl, b"GET /info/api.json HTTP/1.1\r\nHost: h\r\n\r\n")
    assert fields(req) == (b"GET", b"/info/api.json", None, True, b"")
    req = one(impl, b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert req.body == b""


def test_body_waits_for_every_byte(impl: Any) -> None:
    parser = impl.http.HttpParser()
    assert parser.feed(POST[:-1]) == []
    assert not parser.idle
    [req] = parser.feed(POST[-1:])
    assert req.body == b'{"jsonrpc":1}'


def test_lf_only_line_endings(impl: Any) -> None:
    req = one(impl, b"POST / HTTP/1.1\nContent-Length: 2\nContent-Type: text/plain\n\n{}")
    assert fields(req) == (b"POST", b"/", b"text/plain", True, b"{}")


def test_header_names_are_case_insensitive_and_values_trimmed(impl: Any) -> None:
    req = one(
        impl, b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh:\t 2 \t\r\nCONTENT-TYPE:  application/json; charset=utf-8 \r\n\r\n{}"
    )
    assert req.body == b"{}"
    assert req.content_type == b"application/json; charset=utf-8"


def test_repeated_equal_content_length_is_accepted(impl: Any) -> None:
    assert one(impl, b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}").body == b"{}"


@pytest.mark.parametrize(
    "headers, message",
    [
        (b"Content-Length: 2\r\nContent-Length: 3", "conflicting Content-Length headers"),
        (b"Content-Length: -1", "Content-Length is not a non-negative integer"),
        (b"Content-Length: +1", "Content-Length is not a non-negative integer"),
        (b"Content-Length: 1 2", "Content-Length is not a non-negative integer"),
        (b"Content-Length: ", "Content-Length is not a non-negative integer"),
        (b"Content-Length: 1234567890123456789", "Content-Length is not a non-negative integer"),
    ],
)
def test_bad_content_length(impl: Any, headers: bytes, message: str) -> None:
    assert error(impl, b"POST / HTTP/1.1\r\n" + headers + b"\r\n\r\n") == (400, message)


# -- chunked framing -------------------------------------------------------------------


def test_chunked_with_extensions_and_trailers(impl: Any) -> None:
    parser = impl.http.HttpParser()
    [req] = parser.feed(CHUNKED)
    assert fields(req) == (b"POST", b"/rpc", b"application/json", True, b"hello world, 10 bytes")
    assert parser.idle


def test_chunked_split_byte_by_byte(impl: Any) -> None:
    parser = impl.http.HttpParser()
    got = []
    for i in range(len(CHUNKED)):
        got += parser.feed(CHUNKED[i : i + 1])
    assert [fields(r) for r in got] == [(b"POST", b"/rpc", b"application/json", True, b"hello world, 10 bytes")]


def test_chunked_bare_lf_and_uppercase_hex(impl: Any) -> None:
    req = one(impl, b"POST / HTTP/1.1\nTransfer-Encoding: identity, Chunked\n\nB\nhello world\n0\n\n")
    assert req.body == b"hello world"


@pytest.mark.parametrize(
    "chunks, status, message",
    [
        (b"zz\r\n", 400, "malformed chunk size"),
        (b"\r\n", 400, "malformed chunk size"),
        (b"-1\r\n", 400, "malformed chunk size"),
        (b"1234567890abcdef\r\n", 400, "malformed chunk size"),
        (b"3\r\nabcX", 400, "chunk data is not followed by CRLF"),
        (b"1" * 1100, 400, "chunk size line is too long"),
        (b"1" + b" " * 1100 + b"\r\n", 400, "chunk size line is too long"),
    ],
)
def test_bad_chunks(impl: Any, chunks: bytes, status: int, message: str) -> None:
    assert error(impl, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks) == (status, message)


def test_transfer_encoding_with_content_length_is_refused(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert error(impl, data) == (400, "both Content-Length and Transfer-Encoding were sent")


@pytest.mark.parametrize(
    "coding", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"chunked, identity", b"", b"chunked,"]
)
def test_unsupported_transfer_coding(impl: Any, coding: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
    assert error(impl, data) == (501, "only the chunked transfer coding is supported")


# -- several requests on one connection ----------------------------------------------


def test_pipelined_requests_in_one_feed(impl: Any) -> None:
    get = b"GET /info/functions.json HTTP/1.1\r\nHost: h\r\n\r\n"
    parser = impl.http.HttpParser()
    items = parser.feed(POST + b"\r\n" + CHUNKED + get + POST[:30])
    assert [fields(r) for r in items] == [
        (b"POST", b"/", b"application/json", True, b'{"jsonrpc":1}'),
        (b"POST", b"/rpc", b"application/json", True, b"hello world, 10 bytes"),
        (b"GET", b"/info/functions.json", None, True, b""),
    ]
    assert not parser.idle
    assert [fields(r) for r in parser.feed(POST[30:])] == [fields(items[0])]
    assert parser.idle


def test_blank_lines_between_requests_keep_the_parser_idle(impl: Any) -> None:
    parser = impl.http.HttpParser()
    assert parser.feed(b"\r\n\r\n") == []
    assert parser.idle


# -- Expect: 100-continue --------------------------------------------------------------


def test_expect_continue_before_the_body(impl: Any) -> None:
    head = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n"
    parser = impl.http.HttpParser()
    items = parser.feed(head)
    assert len(items) == 1 and items[0] is impl.http.CONTINUE
    assert repr(items[0]) == "CONTINUE"
    [req] = parser.feed(b"{}")
    assert req.body == b"{}"


def test_expect_continue_not_sent_when_the_body_is_already_here(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{}"
    [req] = impl.http.HttpParser().feed(data)
    assert isinstance(req, impl.http.Request)


def test_expect_continue_with_chunked_body(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    parser = impl.http.HttpParser()
    assert parser.feed(data) == [impl.http.CONTINUE]
    assert [r.body for r in parser.feed(b"2\r\n{}\r\n0\r\n\r\n")] == [b"{}"]


def test_expect_continue_is_ignored_for_http10(impl: Any) -> None:
    data = b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    assert impl.http.HttpParser().feed(data) == []


def test_other_expectations_are_refused(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: something-else\r\n\r\n"
    assert error(impl, data) == (417, "only 'Expect: 100-continue' is supported")


# -- limits ----------------------------------------------------------------------------


def test_content_length_over_the_limit(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"
    assert error(impl, data, max_body=100) == (413, "request body is larger than the limit of 100 bytes")
    assert isinstance(one(impl, data + b"x" * 101, max_body=101), impl.http.Request)


def test_chunked_body_over_the_limit(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + b"x" * 50 + b"\r\n33\r\n"
    parser = impl.http.HttpParser(max_body=100)
    [err] = parser.feed(data)
    assert (err.status, err.message) == (413, "request body is larger than the limit of 100 bytes")


def test_header_block_over_the_limit(impl: Any) -> None:
    big = b"POST / HTTP/1.1\r\nX-Big: " + b"a" * 200
    parser = impl.http.HttpParser(max_header=100)
    [err] = parser.feed(big)
    assert (err.status, err.message) == (431, "request header block is larger than 100 bytes")
    assert error(impl, big + b"\r\n\r\n", max_header=100) == (431, "request header block is larger than 100 bytes")


def test_header_block_at_the_limit(impl: Any) -> None:
    head = b"GET / HTTP/1.1\r\nX: " + b"a" * 81
    assert len(head) == 100
    assert isinstance(one(impl, head + b"\r\n\r\n", max_header=100), impl.http.Request)


def test_trailer_section_over_the_limit(impl: Any) -> None:
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + b"a" * 200
    assert error(impl, data, max_header=100) == (431, "chunked trailer section is too large")


def test_parser_is_dead_after_an_error(impl: Any) -> None:
    parser = impl.http.HttpParser()
    [err] = parser.feed(b"BAD\r\n\r\n" + POST)
    assert isinstance(err, impl.http.HttpError)
    assert parser.feed(POST) == []
    assert not parser.idle


# -- request line and headers ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, status, message",
    [
        (b"POST /", 400, "malformed request line (expected: METHOD TARGET HTTP/1.1)"),
        (b"POST  HTTP/1.1", 400, "malformed request line (expected: METHOD TARGET HTTP/1.1)"),
        (b"POST / HTTP/1.1 extra", 400, "malformed request line (expected: METHOD TARGET HTTP/1.1)"),
        (b"POST\t/ HTTP/1.1", 400, "malformed request line (expected: METHOD TARGET HTTP/1.1)"),
        (b"PO(ST / HTTP/1.1", 400, "malformed request method"),
        (b" / HTTP/1.1", 400, "malformed request method"),
        (b"POST / HTTP/1.1x", 400, "malformed HTTP version in the request line"),
        (b"POST / http/1.1", 400, "malformed HTTP version in the request line"),
        (b"POST / HTTP/2.0", 505, "HTTP version HTTP/2.0 is not supported (use HTTP/1.1)"),
        (b"POST / HTTP/0.9", 505, "HTTP version HTTP/0.9 is not supported (use HTTP/1.1)"),
    ],
)
def test_bad_request_line(impl: Any, line: bytes, status: int, message: str) -> None:
    assert error(impl, line + b"\r\nHost: h\r\n\r\n") == (status, message)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"NoColon", "malformed header line (expected: Name: value)"),
        (b": empty name", "malformed header line (expected: Name: value)"),
        (b"Bad Name: x", "malformed header name"),
        (b" folded: x", "malformed header name"),
        (b"Host : h", "malformed header name"),
    ],
)
def test_bad_header_line(impl: Any, header: bytes, message: str) -> None:
    assert error(impl, b"GET / HTTP/1.1\r\n" + header + b"\r\n\r\n") == (400, message)


# -- keep-alive ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, connection, keep_alive",
    [
        (b"HTTP/1.1", None, True),
        (b"HTTP/1.1", b"close", False),
        (b"HTTP/1.1", b"Keep-Alive, Close", False),
        (b"HTTP/1.1", b"keep-alive", True),
        (b"HTTP/1.0", None, False),
        (b"HTTP/1.0", b"keep-alive", True),
        (b"HTTP/1.0", b" Upgrade , KEEP-ALIVE ", True),
        (b"HTTP/1.0", b"close", False),
    ],
)
def test_keep_alive_rules(impl: Any, version: bytes, connection: bytes | None, keep_alive: bool) -> None:
    head = b"POST / " + version + b"\r\nContent-Length: 2\r\n"
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    parser = impl.http.HttpParser()
    items = parser.feed(head + b"\r\n{}" + POST)
    assert items[0].keep_alive is keep_alive
    # A request that closes the connection is the last one read from it.
    assert len(items) == (2 if keep_alive else 1)
    if not keep_alive:
        assert parser.feed(POST) == []
        assert not parser.idle


# -- building responses ----------------------------------------------------------------


def test_build_response(impl: Any) -> None:
    assert impl.http.build_response(200, b'{"a":1}') == (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )


def test_build_response_closing_with_extra_headers(impl: Any) -> None:
    got = impl.http.build_response(405, b"use POST\n", False, b"text/plain; charset=utf-8", b"Allow: POST\r\n")
    assert got == (
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 9\r\nConnection: close\r\nAllow: POST\r\n\r\nuse POST\n"
    )
    assert (
        impl.http.build_response(status=413, body=b"", keep_alive=True, content_type=b"text/plain", extra_headers=b"")
        == b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "status, reason",
    [
        (100, b"Continue"),
        (415, b"Unsupported Media Type"),
        (431, b"Request Header Fields Too Large"),
        (299, b"Unknown"),
    ],
)
def test_build_response_reasons(impl: Any, status: int, reason: bytes) -> None:
    assert impl.http.build_response(status, b"").startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))


def test_build_response_accepts_bytes_like_bodies(impl: Any) -> None:
    assert impl.http.build_response(200, bytearray(b"{}")).endswith(b"\r\n\r\n{}")


# -- the objects themselves ------------------------------------------------------------


def test_http_error_object(impl: Any) -> None:
    err = impl.http.HttpError(413, "too big")
    assert (err.status, err.message, err.args) == (413, "too big", (413, "too big"))
    assert repr(err) == "HttpError(413, 'too big')"
    assert err == impl.http.HttpError(413, "too big") and err != impl.http.HttpError(400, "too big")
    assert hash(err) == hash(impl.http.HttpError(413, "too big"))
    with pytest.raises(impl.http.HttpError) as info:
        raise err
    assert isinstance(info.value, Exception)


def test_request_object(impl: Any) -> None:
    req = impl.http.Request(b"GET", b"/x", None, False, b"abc")
    assert fields(req) == (b"GET", b"/x", None, False, b"abc")
    assert req == impl.http.Request(b"GET", b"/x", None, False, b"abc")
    assert req != impl.http.Request(b"GET", b"/x", None, True, b"abc")
    assert req != "not a request"
    with pytest.raises(TypeError):
        hash(req)


def test_feed_accepts_bytes_like_data(impl: Any) -> None:
    parser = impl.http.HttpParser()
    assert parser.feed(bytearray(POST[:20])) == []
    [req] = parser.feed(memoryview(POST[20:]))
    assert req.body == b'{"jsonrpc":1}'


def test_build_head_matches_build_response(impl: Any) -> None:
    body = b'{"x":' + b"1" * 100 + b"}"
    for keep_alive in (True, False):
        for ctype, extra in ((b"application/json", b""), (b"text/plain", b"Allow: POST\r\n")):
            whole = impl.http.build_response(200, body, keep_alive, ctype, extra)
            assert impl.http.build_head(200, len(body), keep_alive, ctype, extra) + body == whole


def test_bare_lf_header_lines_ending_in_a_crlf_blank_line(impl: Any) -> None:
    body = b'{"jsonrpc":"2.0","method":"Instance.Validate","params":{},"id":1}'
    n = len(body)
    for data in (
        b"POST / HTTP/1.1\nHost: h\nContent-Length: %d\n\r\n%s" % (n, body),  # LF lines, CRLF blank line
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\n%s" % (n, body),  # CRLF lines, LF blank line
        b"POST / HTTP/1.1\nHost: h\nContent-Length: %d\n\n%s" % (n, body),
    ):
        (req,) = impl.http.HttpParser().feed(data)
        assert isinstance(req, impl.http.Request) and req.body == body, (data, req)
        parser = impl.http.HttpParser()  # the same bytes one at a time
        got = [item for i in range(len(data)) for item in parser.feed(data[i : i + 1])]
        assert len(got) == 1 and got[0].body == body
