"""The Instance plugin: every JSON-RPC method InfraKit calls, and ``/info``.

Each method takes the decoded ``params`` object and returns the encoded
``result`` object, or an awaitable of it when the answer has to wait for the
state to be durable or for the provider.  Errors are :class:`RpcError`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from . import __version__
from ._impl import codec, rpc
from .provider import LogicalProvider, Provider, ProviderError
from .rpc import Parts, Pending
from .state import Record
from .store import Store, StoreError, UnknownInstance

__all__ = ["INSTANCE_VERSIONS", "Plugin"]

log = logging.getLogger(__name__)

RpcError = rpc.RpcError
INVALID_PARAMS = rpc.INVALID_PARAMS
PLUGIN_ERROR = rpc.PLUGIN_ERROR

#: Every Instance API version served; later versions only added fields.
INSTANCE_VERSIONS = ("0.1.0", "0.3.0", "0.5.0", "0.6.0", "0.6.1")

Result = bytes | Parts | Pending | Awaitable[bytes]

_OK = b'{"Type":%s,"OK":true}'
_EMPTY_TYPE = rpc.EMPTY_TYPE  # b'""'
_provision_params = rpc.provision_params
_OK_EMPTY = _OK % _EMPTY_TYPE
_BIG = 64 * 1024  # answers this big are sent in parts, not copied into one buffer
_APIS = orjson.dumps({"APIs": [{"Name": "Instance", "Version": v} for v in INSTANCE_VERSIONS]})
_TYPES = orjson.dumps({"Types": {f"Instance/{v}": [] for v in INSTANCE_VERSIONS}})
_HELLO = orjson.dumps({"Objects": {f"Instance/{v}": [{"Name": ".", "ProxyFor": ""}] for v in INSTANCE_VERSIONS}})


def _params_error(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"invalid params: {message}")


def _string_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _params_error(f"{what} must be an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            raise _params_error(f"{what}[{k!r}] must be a string, not {type(v).__name__}")
    return value


def _instance_id(params: dict[str, Any]) -> str:
    instance_id = params.get("Instance")
    if not isinstance(instance_id, str) or not instance_id:
        raise _params_error('"Instance" must be a non-empty instance ID string')
    return instance_id


class Plugin:
    """Instance methods over a :class:`Store` and a :class:`Provider`."""

    def __init__(self, store: Store, provider: Provider | None = None, name: str = "instance-py") -> None:
        self.store = store
        self.provider = provider or LogicalProvider()
        self.name = name
        self._rand = random.Random()
        self._proposed: set[str] = set()  # IDs handed to the provider, not yet recorded
        self.methods: dict[str, Callable[[dict[str, Any]], Result]] = {
            "Plugin.Implements": self.implements,
            "Handshake.Implements": self.implements,
            "Handshake.Types": self.types,
            "Handshake.Hello": self.hello,
            "Instance.Validate": self.validate,
            "Instance.Provision": self.provision,
            "Instance.Label": self.label,
            "Instance.Destroy": self.destroy,
            # Whatever the provider: the checks and the state's answer in one call (the _rpc twin).
            "Instance.DescribeInstances": rpc.Describe(store, self._describe_after, _BIG, Parts),
        }
        self._logical: Callable[..., Pending] | None = None
        if self.provider.logical:
            # Provision with no provider hooks to await: done whole by the _rpc twin (in C when compiled).
            self._logical = rpc.LogicalProvision(store, self._rand, self._proposed, StoreError, Record)
            self.methods["Instance.Provision"] = self._logical
            # Destroy and Label likewise: checks, the store's change and the pending answer in one call.
            self.methods["Instance.Destroy"] = rpc.LogicalDestroy(store, StoreError, UnknownInstance)
            self.methods["Instance.Label"] = rpc.LogicalLabel(store, StoreError, UnknownInstance)

    def quick_answers(self) -> tuple[tuple[bytes, bytes, bool], ...]:
        """The methods whose answer is fixed, for ``rpc.quick``: ``(method, result, empty_type)``,
        ``empty_type`` when only a request of no (or an empty) "Type" gets ``result``."""
        answers = [
            (b"Plugin.Implements", _APIS, False),
            (b"Handshake.Implements", _APIS, False),
            (b"Handshake.Types", _TYPES, False),
            (b"Handshake.Hello", _HELLO, False),
        ]
        if self.provider.logical:
            answers.insert(0, (b"Instance.Validate", _OK_EMPTY, True))  # first: the one called most
        return tuple(answers)

    # -- handshakes -------------------------------------------------------------

    def implements(self, params: dict[str, Any]) -> bytes:
        return _APIS

    def types(self, params: dict[str, Any]) -> bytes:
        return _TYPES

    def hello(self, params: dict[str, Any]) -> bytes:
        return _HELLO

    # -- Instance ---------------------------------------------------------------

    @staticmethod
    def _type(params: dict[str, Any]) -> bytes:
        kind = params.get("Type")
        if kind is None or kind == "":
            return _EMPTY_TYPE
        if not isinstance(kind, str):
            raise _params_error('"Type" must be a string')
        raise RpcError(PLUGIN_ERROR, f"no-plugin:{kind}")

    def validate(self, params: dict[str, Any]) -> Result:
        type_json = self._type(params)
        answer = _OK_EMPTY if type_json is _EMPTY_TYPE else _OK % type_json
        if self.provider.logical:
            return answer
        return self._provider_call(self.provider.validate(params.get("Properties")), answer)

    def provision(self, params: dict[str, Any], spec_json: bytes | None = None) -> Result:
        """``spec_json``: the Spec's own text from the request (kept as is, so its numbers round-trip)."""
        if self._logical is not None:
            return self._logical(params, spec_json)
        type_json, spec, tags, logical_id = _provision_params(params)  # compiled: the checks of _type and more
        spec_text = spec_json if spec_json is not None else codec.encode_spec(spec)
        # The ID is chosen before the provider acts and handed to it, so that a provider
        # can be idempotent, and clean up what a failed or timed-out provision left.
        instance_id = self._new_id()
        return self._provision_with_provider(spec, spec_text, tags, logical_id, instance_id, type_json)

    def _new_id(self) -> str:
        """A fresh ID: random like InfraKit's own plugins, checked against every ID in the state
        and every provision under way."""
        state = self.store.state
        while True:
            instance_id = f"instance-{self._rand.getrandbits(63)}"
            if not state.known(instance_id) and instance_id not in self._proposed:
                return instance_id

    async def _provision_with_provider(
        self,
        spec: dict[str, Any],
        spec_text: bytes,
        tags: dict[str, str],
        logical_id: str | None,
        proposed: str,
        type_json: bytes,
    ) -> bytes:
        self._proposed.add(proposed)
        try:
            try:
                made = await self.provider.provision(spec, proposed)
            except ProviderError as exc:
                log.warning("provision of proposed instance %s failed: %s", proposed, exc)
                raise RpcError(PLUGIN_ERROR, f"provision failed: {exc}") from None
        finally:
            self._proposed.discard(proposed)
        instance_id = proposed
        if made is not None:
            instance_id = made.id or proposed
            if made.tags:
                tags = {**tags, **made.tags}
        if self.store.state.known(instance_id):
            raise RpcError(PLUGIN_ERROR, f"provider returned instance ID {instance_id} that already exists")
        return await self._record(spec_text, tags, logical_id, instance_id, type_json).wait()

    def _record(
        self,
        spec_text: bytes,
        tags: dict[str, str],
        logical_id: str | None,
        instance_id: str,
        type_json: bytes,
    ) -> Pending:
        rec = Record(instance_id, codec.encode_brief(instance_id, logical_id, tags), spec_text)
        try:
            fut = self.store.provision(rec, tags)
        except StoreError as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        return Pending(fut, b'{"Type":' + type_json + b',"ID":' + orjson.dumps(instance_id) + b"}")

    def label(self, params: dict[str, Any]) -> Result:
        type_json = self._type(params)
        instance_id = _instance_id(params)
        labels = _string_map(params.get("Labels"), "Labels")
        if self.store.state.get(instance_id) is None:
            raise RpcError(PLUGIN_ERROR, f"cannot label instance {instance_id}: no such instance")
        if self.provider.logical:
            return self._commit_label(instance_id, labels, type_json)
        return self._provider_call(
            self.provider.label(instance_id, labels), None, lambda: self._commit_label(instance_id, labels, type_json)
        )

    def _commit_label(self, instance_id: str, labels: dict[str, str], type_json: bytes) -> Pending:
        try:
            fut = self.store.label(instance_id, labels)
        except UnknownInstance:
            raise RpcError(PLUGIN_ERROR, f"cannot label instance {instance_id}: no such instance") from None
        except StoreError as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        return Pending(fut, _OK_EMPTY if type_json is _EMPTY_TYPE else _OK % type_json)

    def destroy(self, params: dict[str, Any]) -> Result:
        type_json = self._type(params)
        instance_id = _instance_id(params)
        context = params.get("Context")
        if context is not None and not isinstance(context, dict):
            raise _params_error('"Context" must be an object')
        rec = self.store.state.get(instance_id)
        if rec is None:
            raise RpcError(PLUGIN_ERROR, f"cannot destroy instance {instance_id}: no such instance")
        if self.provider.logical:
            return self._commit_destroy(instance_id, type_json)
        return self._provider_call(
            self.provider.destroy(instance_id, rec.description(), context or {}),
            None,
            lambda: self._commit_destroy(instance_id, type_json, provider_done=True),
        )

    def _commit_destroy(self, instance_id: str, type_json: bytes, provider_done: bool = False) -> Pending:
        try:
            if provider_done:
                # The provider destroyed it: it is gone even if a sync moved it to NonFunctional meanwhile.
                fut = self.store.forget(instance_id)
            else:
                fut = self.store.destroy(instance_id)
        except UnknownInstance:
            raise RpcError(PLUGIN_ERROR, f"cannot destroy instance {instance_id}: no such instance") from None
        except StoreError as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        return Pending(fut, _OK_EMPTY if type_json is _EMPTY_TYPE else _OK % type_json)

    async def _describe_after(
        self, barrier: Awaitable[None], type_json: bytes, tags: dict[str, str] | None, properties: bool
    ) -> bytes:
        try:
            await barrier
        except StoreError as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        return codec.describe_result(type_json, self.store.describe(tags, properties))

    async def _provider_call(
        self,
        call: Awaitable[None],
        answer: bytes | None,
        then: Callable[[], Pending] | None = None,
    ) -> bytes:
        try:
            await call
        except ProviderError as exc:
            raise RpcError(PLUGIN_ERROR, str(exc)) from None
        if then is not None:
            return await then().wait()
        assert answer is not None
        return answer

    # -- /info ------------------------------------------------------------------

    def api_info(self) -> bytes:
        """``GET /info/api.json``: what this plugin implements."""
        # The shapes of deploykit's pkg/plugin MethodDescription: Request and
        # Response, their ids Go strings (InfraKit's info client decodes them so).
        methods = [
            {
                "Method": m,
                "Request": {"jsonrpc": "2.0", "method": m, "params": example, "id": "1"},
                "Response": {"result": _RESULTS[m], "id": "1"},
            }
            for m, example in _EXAMPLES.items()
        ]
        return orjson.dumps(
            {
                "Name": self.name,
                "Implements": [{"Name": "Instance", "Version": v} for v in INSTANCE_VERSIONS],
                "Interfaces": [{"Name": "Instance", "Version": v, "Methods": methods} for v in INSTANCE_VERSIONS],
                "Vendor": {
                    "Name": "infrakit-instance",
                    "Version": __version__,
                    "URL": "https://pypi.org/project/infrakit-instance/",
                },
            }
        )


_SPEC_EXAMPLE: dict[str, Any] = {
    "Properties": {},
    "Tags": {"infrakit.group": "workers"},
    "Init": "",
    "LogicalID": None,
    "Attachments": [],
}
_EXAMPLES: dict[str, Any] = {
    "Instance.Validate": {"Type": "", "Properties": {}},
    "Instance.Provision": {"Type": "", "Spec": _SPEC_EXAMPLE},
    "Instance.Label": {"Type": "", "Instance": "instance-1", "Labels": {"key": "value"}},
    "Instance.Destroy": {"Type": "", "Instance": "instance-1", "Context": {"Reason": "terminate"}},
    "Instance.DescribeInstances": {"Type": "", "Tags": {"infrakit.group": "workers"}, "Properties": False},
}
_RESULTS: dict[str, Any] = {
    "Instance.Validate": {"Type": "", "OK": True},
    "Instance.Provision": {"Type": "", "ID": "instance-1"},
    "Instance.Label": {"Type": "", "OK": True},
    "Instance.Destroy": {"Type": "", "OK": True},
    "Instance.DescribeInstances": {
        "Type": "",
        "Descriptions": [{"ID": "instance-1", "LogicalID": None, "Tags": {"infrakit.group": "workers"}}],
    },
}
