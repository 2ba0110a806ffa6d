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
Method = Callable[[dict[str, Any]], "bytes | Parts | Pending | Awaitable[bytes]"]


class Parts(tuple):  # type: ignore[type-arg]
    """A big answer as ``(head, body, tail)``: sent as three buffers so that the
    body (a cached Describe of thousands of instances) is never copied."""

    __slots__ = ()

    def __len__(self) -> int:  # the byte length of the whole answer
        return sum(map(bytes.__len__, tuple.__iter__(self)))

    def join(self) -> bytes:
        return b"".join(tuple.__iter__(self))


class Pending:
    """An answer that waits for a change to be durable.

    ``done`` is the store's future, shared by every change of a batch (so one
    completion answers them all): wait on it, never cancel it.  ``answer`` is
    sent once it succeeds; ``id_json`` is set once the dispatcher has put the
    answer in its envelope, and says which id an error answer carries."""

    __slots__ = ("answer", "done", "id_json")

    def __init__(self, done: asyncio.Future[None], answer: bytes, id_json: bytes | None = None) -> None:
        self.done = done
        self.answer = answer
        self.id_json = id_json

    def settle(self) -> bytes:
        """The response, once ``done`` is: the answer, or the error the change failed with."""
        id_json = self.id_json or b"null"
        if self.done.cancelled():
            message = "the change was cancelled before it was written"
            return envelope.encode_error(id_json, envelope.INTERNAL_ERROR, message)
        exc = self.done.exception()
        if exc is None:
            return self.answer
        if isinstance(exc, RpcError):
            return envelope.encode_error(id_json, exc.code, exc.message)
        return envelope.encode_error(id_json, envelope.PLUGIN_ERROR, str(exc))

    async def wait(self) -> bytes:
        """For coroutines: the answer once durable, or the failure as an :class:`RpcError`."""
        try:
            await asyncio.shield(self.done)
        except RpcError:
            raise
        except Exception as exc:
            raise RpcError(envelope.PLUGIN_ERROR, str(exc)) from None
        return self.answer


Answer = Union[bytes, Parts, Pending, None, "asyncio.Future[bytes | None]"]


class Dispatcher:
    """Turns a body into the response body.

    Returns bytes when the answer is ready at once (the common case), ``None``
    when the body held only notifications (answer with an empty body), or a
    future of either.
    """

    def __init__(self, methods: dict[str, Method]) -> None:
        self.methods = methods

    def handle(self, body: bytes) -> Answer:
        try:
            doc = envelope.decode_body(body)
        except RpcError as exc:
            return envelope.encode_error(exc.id_json, exc.code, exc.message)
        if isinstance(doc, list):
            return self._batch(doc)
        return self._one(doc)

    def _one(self, doc: Any) -> Answer:
        try:
            call = envelope.split_call(doc)
        except RpcError as exc:
            return envelope.encode_error(exc.id_json, exc.code, exc.message)
        id_json = call.id_json
        method = self.methods.get(call.method)
        if method is None:
            if id_json is None:
                return None
            return envelope.encode_error(id_json, envelope.METHOD_NOT_FOUND, f"method not found: {call.method!r}")
        try:
            result = method(call.params)
        except RpcError as exc:
            return None if id_json is None else envelope.encode_error(id_json, exc.code, exc.message)
        except Exception as exc:  # a bug must answer, not kill the connection
            log.exception("%s failed", call.method)
            return None if id_json is None else _internal(id_json, call.method, exc)
        if isinstance(result, bytes):
            return None if id_json is None else envelope.encode_result(id_json, result)
        if isinstance(result, Pending):
            if id_json is None:
                return None  # a notification: nobody waits for the write
            return Pending(result.done, envelope.encode_result(id_json, result.answer), id_json)
        if isinstance(result, Parts):
            if id_json is None:
                return None
            head, body, tail = tuple.__iter__(result)
            return Parts((b'{"jsonrpc":"2.0","result":' + head, body, tail + b',"id":' + id_json + b"}"))
        return _finish(result, id_json, call.method)

    def _batch(self, docs: list[Any]) -> Answer:
        if not docs:
            return envelope.encode_error(b"null", envelope.INVALID_REQUEST, "invalid request: empty batch")
        answers = [self._one(d) for d in docs]
        if all(isinstance(a, (bytes, Parts)) or a is None for a in answers):
            return _join(answers)
        return asyncio.ensure_future(_gather_batch(answers))


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
    return envelope.encode_error(id_json, envelope.INTERNAL_ERROR, f"internal error in {method}: {exc!r}")


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
            answer = envelope.encode_error(id_json or b"null", envelope.INTERNAL_ERROR, f"{method} was cancelled")
        elif (exc := f.exception()) is not None:
            if isinstance(exc, RpcError):
                answer = envelope.encode_error(id_json or b"null", exc.code, exc.message)
            else:
                log.error("%s failed", method, exc_info=exc)
                answer = _internal(id_json or b"null", method, exc)
        else:
            answer = envelope.encode_result(id_json or b"null", f.result())
        out.set_result(None if id_json is None else answer)

    fut.add_done_callback(done)
    return out
