"""JSON-RPC 2.0 dispatch: a request body in, response bytes (or a future of them) out."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Union

from ._impl import rpc as envelope

__all__ = ["Dispatcher", "Parts", "Pending"]

log = logging.getLogger(__name__)

RpcError = envelope.RpcError

#: Defaults of the batch limits (--max-batch, --max-batch-bytes).
MAX_BATCH = 100
MAX_BATCH_BYTES = 16 * 1024 * 1024

#: JSON text without the whitespace between its tokens (numbers and strings kept as written).
compact = envelope.compact


def error_answer(id_json: bytes, code: int, message: str, method: str | None) -> bytes:
    """An error answer, logged at info level with its method, id, code and message."""
    log.info(
        "error answer: method=%s id=%s code=%d: %s",
        method if method is not None else "-",
        id_json[:100].decode("utf-8", "replace"),
        code,
        message if len(message) <= 500 else message[:500] + "...",
    )
    return envelope.encode_error(id_json, code, message)


Method = Callable[[dict[str, Any]], "bytes | Parts | Pending | Awaitable[bytes]"]


class Parts(tuple):  # type: ignore[type-arg]
    """A big answer as ``(head, body, tail)``: sent as three buffers so that the
    body (a cached Describe of thousands of instances) is never copied."""

    __slots__ = ()

    def __len__(self) -> int:  # the byte length of the whole answer
        return sum(map(bytes.__len__, tuple.__iter__(self)))

    def join(self) -> bytes:
        return b"".join(tuple.__iter__(self))


class Pending(envelope.PendingCore):
    """An answer that waits for a change to be durable.

    ``done`` is the store's future, shared by every change of a batch (so one
    completion answers them all): wait on it, never cancel it.  ``answer`` is
    sent once it succeeds; ``id_json`` is set once the dispatcher has put the
    answer in its envelope, and says which id an error answer carries.
    ``settle()`` (the response once ``done`` is) is PendingCore's, compiled."""

    __slots__ = ()
    done: asyncio.Future[None]

    def _failed(self) -> bytes:
        """settle() of a change that was cancelled or failed: the error answer."""
        id_json = self.id_json or b"null"
        if self.done.cancelled():
            message = "the change was cancelled before it was written"
            return error_answer(id_json, envelope.INTERNAL_ERROR, message, self.method)
        exc = self.done.exception()
        if isinstance(exc, RpcError):
            return error_answer(id_json, exc.code, exc.message, self.method)
        return error_answer(id_json, envelope.PLUGIN_ERROR, str(exc), self.method)

    async def wait(self) -> bytes:
        """For coroutines: the answer once durable, or the failure as an :class:`RpcError`."""
        try:
            await asyncio.shield(self.done)
        except RpcError:
            raise
        except Exception as exc:
            raise RpcError(envelope.PLUGIN_ERROR, str(exc)) from None
        return self.answer


envelope.use_pending(Pending)

Answer = Union[bytes, Parts, Pending, None, "asyncio.Future[bytes | None]"]


class Dispatcher(envelope.DispatchCore):
    """Turns a body into the response body.

    Returns bytes when the answer is ready at once (the common case), ``None``
    when the body held only notifications (answer with an empty body), or a
    future of either.  Ids are echoed as the exact text the request gave; the
    methods in ``spec_methods`` get the Spec's own text (compacted) as a second
    argument, so that its numbers are kept exactly as sent.
    """

    def __init__(
        self,
        methods: dict[str, Method],
        max_batch: int = MAX_BATCH,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        spec_methods: frozenset[str] = frozenset({"Instance.Provision"}),
    ) -> None:
        self.methods = methods
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.spec_methods = spec_methods

    # handle(body) is DispatchCore's (compiled): a request object of a known method and a
    # plain id is answered there; the rest comes here.

    def _rest(self, doc: Any, body: bytes, texts: bool) -> Answer:
        """The answer to what DispatchCore.handle does not answer itself: a batch, an id or
        a Spec whose text must be read from the body (``texts``), an invalid request."""
        if isinstance(doc, list):
            return self._batch(doc, body)
        raw = _texts(body, envelope.scan(body)[1]) if texts else None
        return self._one(doc, raw[0] if raw else None)[0]

    @staticmethod
    def _error(id_json: bytes, code: int, message: str, method: str | None) -> bytes:
        return error_answer(id_json, code, message, method)

    @staticmethod
    def _fail(id_json: bytes, method: str, exc: BaseException) -> bytes:
        log.error("%s failed", method, exc_info=exc)
        return _internal(id_json, method, exc)

    def _needs_text(self, doc: Any, body: bytes) -> bool:
        """Whether the id or the Spec of a request object must be read from the body's text."""
        if not isinstance(doc, dict):
            return False
        name = doc.get("method")
        if type(name) is str and name in self.spec_methods:
            return True
        ident = doc.get("id")
        kind = type(ident)
        if kind is str:
            return b"\\" in body  # an escape: orjson would write the string another way
        if kind is int:
            return ident == 0 and b"-0" in body
        return kind is float

    def _one(self, doc: Any, raw: tuple[bytes | None, bytes | None] | None) -> tuple[Answer, bytes, str | None]:
        """The answer to one request object, the id it echoes, and its method."""
        raw_id = raw[0] if raw is not None else None
        try:
            call = envelope.split_call(doc)
        except RpcError as exc:
            bad_id = exc.id_json if raw_id is None or exc.id_json == b"null" else raw_id
            what = doc.get("method") if isinstance(doc, dict) else None
            answer = error_answer(bad_id, exc.code, exc.message, what if isinstance(what, str) else None)
            return answer, bad_id, None
        id_json: bytes | None = call.id_json
        if id_json is not None and raw_id is not None:
            id_json = raw_id
        name = call.method
        err_id = id_json or b"null"
        method = self.methods.get(name)
        if method is None:
            if id_json is None:
                return None, err_id, name
            return error_answer(id_json, envelope.METHOD_NOT_FOUND, f"method not found: {name!r}", name), err_id, name
        try:
            if name in self.spec_methods and raw is not None and raw[1] is not None:
                result = method(call.params, compact(raw[1]))
            else:
                result = method(call.params)
        except RpcError as exc:
            answer = error_answer(err_id, exc.code, exc.message, name)
            return (None if id_json is None else answer), err_id, name
        except Exception as exc:  # a bug must answer, not kill the connection
            log.exception("%s failed", name)
            answer = _internal(err_id, name, exc)
            return (None if id_json is None else answer), err_id, name
        if isinstance(result, bytes):
            return (None if id_json is None else envelope.encode_result(id_json, result)), err_id, name
        if id_json is None:
            if isinstance(result, (Pending, Parts)):
                return None, err_id, name  # a notification: nobody waits for the write
            return _finish(result, id_json, name), err_id, name
        return self._wrap(result, id_json, name), err_id, name

    @staticmethod
    def _wrap(result: Any, id_json: bytes, name: str) -> Answer:
        """A method's answer other than bytes, in its envelope for the request of id ``id_json``."""
        if isinstance(result, Pending):
            # Methods hand over a Pending of their own: it is put in its envelope in place.
            result.answer = envelope.encode_result(id_json, result.answer)
            result.id_json = id_json
            result.method = name
            return result
        if isinstance(result, Parts):
            head, body, tail = tuple.__iter__(result)
            return Parts((b'{"jsonrpc":"2.0","result":' + head, body, tail + b',"id":' + id_json + b"}"))
        return _finish(result, id_json, name)

    def _batch(self, docs: list[Any], body: bytes) -> Answer:
        if not docs:
            return error_answer(b"null", envelope.INVALID_REQUEST, "invalid request: empty batch", None)
        if len(docs) > self.max_batch:
            message = (
                f"invalid request: a batch of {len(docs)} requests is over the limit of"
                f" {self.max_batch} requests per batch (--max-batch)"
            )
            return error_answer(b"null", envelope.INVALID_REQUEST, message, None)
        raws: list[tuple[bytes | None, bytes | None]] | None = None
        if any(self._needs_text(d, body) for d in docs):
            raws = _texts(body, envelope.scan(body)[1])
            if len(raws) != len(docs):
                raws = None
        answers: list[Any] = []
        total = 0
        limit = self.max_batch_bytes
        for i, d in enumerate(docs):
            answer, id_json, name = self._one(d, raws[i] if raws is not None else None)
            if isinstance(answer, (bytes, Parts)):
                size = len(answer)
                if total + size > limit:
                    message = (
                        f"this answer of {size} bytes would take the batch's answers over the limit of"
                        f" {limit} bytes (--max-batch-bytes): send this request alone"
                    )
                    answer = error_answer(id_json, envelope.PLUGIN_ERROR, message, name)
                    size = len(answer)
                total += size
            answers.append(answer)
        if all(isinstance(a, (bytes, Parts)) or a is None for a in answers):
            return _join(answers)
        return asyncio.ensure_future(_gather_batch(answers))


def _texts(body: bytes, items: list[list[int]]) -> list[tuple[bytes | None, bytes | None]]:
    """The id text and Spec text of each request object that :func:`scan` located."""
    return [(body[i[0] : i[1]] if i[0] >= 0 else None, body[i[2] : i[3]] if i[2] >= 0 else None) for i in items]


async def _gather_batch(answers: list[Any]) -> bytes | None:
    done = []
    for a in answers:
        if isinstance(a, Pending):
            await asyncio.wait([a.done])
            a = a.settle()
        elif isinstance(a, asyncio.Future):
            a = await a
        done.append(a)
    return _join(done)


def _join(answers: list[Any]) -> bytes | None:
    parts = [a.join() if isinstance(a, Parts) else a for a in answers if a is not None]
    if not parts:
        return None
    return b"[" + b",".join(parts) + b"]"


def _internal(id_json: bytes, method: str, exc: BaseException) -> bytes:
    return error_answer(id_json, envelope.INTERNAL_ERROR, f"internal error in {method}: {exc!r}", method)


def _finish(result: Awaitable[bytes], id_json: bytes | None, method: str) -> asyncio.Future[bytes | None]:
    fut = (
        asyncio.ensure_future(result)
        if inspect.isawaitable(result) and not isinstance(result, asyncio.Future)
        else result
    )
    out: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    def done(f: asyncio.Future[bytes]) -> None:
        if out.cancelled():
            return
        if f.cancelled():
            answer = error_answer(id_json or b"null", envelope.INTERNAL_ERROR, f"{method} was cancelled", method)
        elif (exc := f.exception()) is not None:
            if isinstance(exc, RpcError):
                answer = error_answer(id_json or b"null", exc.code, exc.message, method)
            else:
                log.error("%s failed", method, exc_info=exc)
                answer = _internal(id_json or b"null", method, exc)
        else:
            answer = envelope.encode_result(id_json or b"null", f.result())
        out.set_result(None if id_json is None else answer)

    fut.add_done_callback(done)
    return out
