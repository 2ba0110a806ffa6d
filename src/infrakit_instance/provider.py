"""The provider API: where a plugin meets real infrastructure.

A provider is told about every change the plugin makes (``validate``,
``provision``, ``destroy``, ``label``) and asked about the health of what it
made (``status``).  These are the C plugin's "CODE HERE" points.  The default,
:class:`LogicalProvider`, keeps instances in the state file only.

The contract, in short (docs/providers.md has the long form):

* A provider is built once, before the plugin serves, from a dict of options:
  ``Provider(options)`` or any factory ``f(options) -> Provider``.  Reject bad
  options there by raising :class:`ProviderError` (or ``ValueError``/``TypeError``)
  with a message saying what is wrong: the plugin prints it and exits.
* Every hook is a coroutine, called on the plugin's event loop: never block in
  one (use ``asyncio.to_thread`` for blocking calls).  Hooks may run
  concurrently, InfraKit provisions and destroys in parallel.
* A hook fails by raising :class:`ProviderError`; its message reaches the
  InfraKit user.  Any other exception is logged with its traceback and
  reported the same way.  Every call is bounded by ``--provider-timeout``: a
  hook that takes longer is cancelled and fails.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "BoundedProvider",
    "Health",
    "Instance",
    "LogicalProvider",
    "Provider",
    "ProviderError",
    "Provisioned",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ProviderError(Exception):
    """The provider refused or failed; the message reaches the InfraKit user."""


class Health(str, enum.Enum):
    """What :meth:`Provider.status` says of an instance."""

    #: Working: it belongs in ``Instances`` (a non-functional one moves back to the front).
    HEALTHY = "healthy"
    #: Exists but does not work: it moves to ``NonFunctional`` and is no longer reported,
    #: so InfraKit provisions a replacement.
    BROKEN = "broken"
    #: No longer exists: it is removed from the state.
    GONE = "gone"


@dataclass
class Provisioned:
    """What a provider says of a new instance: its ID (None: let the plugin choose)
    and extra tags to record with it."""

    id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """An instance as :meth:`Provider.status` sees it."""

    id: str
    logical_id: str | None
    tags: Mapping[str, str]
    #: The Spec it was provisioned with (None for instances written by older plugins).
    spec: Any
    #: False when it is in ``NonFunctional``.
    functional: bool

    def description(self) -> dict[str, Any]:
        """The state file's element: ``{"ID", "LogicalID", "Tags", "Properties"}``."""
        return {"ID": self.id, "LogicalID": self.logical_id, "Tags": dict(self.tags), "Properties": self.spec}


class Provider:
    """Base class: every hook is optional and does nothing by default."""

    #: True when every hook is a no-op, so the plugin may skip awaiting them.
    logical = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: dict[str, Any] = dict(options or {})

    async def start(self) -> None:
        """Called once before the plugin serves (connect, check credentials...)."""

    async def stop(self) -> None:
        """Called once when the plugin shuts down."""

    async def validate(self, properties: Any) -> None:
        """Raise :class:`ProviderError` if ``properties`` cannot be provisioned."""

    async def provision(self, spec: dict[str, Any], instance_id: str | None = None) -> Provisioned | None:
        """Create the instance described by ``spec`` (``Properties``, ``Tags``,
        ``Init``, ``LogicalID``, ``Attachments``).  ``instance_id`` is the ID the
        plugin chose for it before calling (recorded unless the provider returns
        another): name the resource after it to be idempotent and to find what a
        failed or timed-out provision left behind."""
        return None

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        """Remove the instance; ``context`` holds InfraKit's reason when it gives one."""

    async def label(self, instance_id: str, labels: dict[str, str]) -> None:
        """Apply tags to the real instance, if the infrastructure has such a thing."""

    async def status(self, instances: Sequence[Instance]) -> Mapping[str, Health]:
        """The health of each instance, active and non-functional, by ID.

        Leave out an instance to keep it where it is.  Values may be
        :class:`Health` members or their strings (``"healthy"``, ``"broken"``,
        ``"gone"``); IDs that are not in ``instances`` are ignored.
        """
        return {}


class LogicalProvider(Provider):
    """Instances that exist in the state file only."""

    logical = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        if options:
            raise ProviderError(f"the logical provider takes no options (given: {', '.join(sorted(options))})")
        super().__init__()


class BoundedProvider(Provider):
    """Another provider, each call bounded by ``timeout`` seconds (0: unbounded)
    and each failure turned into a :class:`ProviderError` saying what happened.

    The plugin and the sync loop only ever call a provider through this.
    """

    def __init__(self, inner: Provider, timeout: float) -> None:
        super().__init__(inner.options)
        self.inner = inner
        self.timeout = timeout
        self.logical = inner.logical
        self._takes_id = _takes_instance_id(inner)

    async def _call(self, hook: str, call: Awaitable[T]) -> T:
        try:
            if self.timeout > 0:
                return await asyncio.wait_for(call, self.timeout)
            return await call
        except ProviderError as exc:
            log.warning("provider %s failed: %s", hook, exc)
            raise
        except asyncio.TimeoutError:
            log.warning("provider %s did not finish within %g s", hook, self.timeout)
            raise ProviderError(
                f"the provider did not finish {hook} within {self.timeout:g} s (--provider-timeout)"
            ) from None
        except Exception as exc:
            log.error("provider %s failed", hook, exc_info=exc)
            raise ProviderError(f"the provider failed in {hook}: {type(exc).__name__}: {exc}") from None

    async def start(self) -> None:
        await self._call("start", self.inner.start())

    async def stop(self) -> None:
        await self._call("stop", self.inner.stop())

    async def validate(self, properties: Any) -> None:
        await self._call("validate", self.inner.validate(properties))

    async def provision(self, spec: dict[str, Any], instance_id: str | None = None) -> Provisioned | None:
        if self._takes_id:
            call = self.inner.provision(spec, instance_id)
        else:  # a provider written before the proposed ID was passed
            call = self.inner.provision(spec)
        made = await self._call("provision", call)
        if made is None:
            return None
        if not isinstance(made, Provisioned):
            raise ProviderError(f"the provider's provision returned {type(made).__name__}, not Provisioned or None")
        if made.id is not None and (not isinstance(made.id, str) or not made.id):
            raise ProviderError(f"the provider's provision returned an invalid instance ID {made.id!r}")
        if not isinstance(made.tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in made.tags.items()
        ):
            raise ProviderError("the provider's provision returned tags that are not a dict of strings")
        return made

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        await self._call("destroy", self.inner.destroy(instance_id, description, context))

    async def label(self, instance_id: str, labels: dict[str, str]) -> None:
        await self._call("label", self.inner.label(instance_id, labels))

    async def status(self, instances: Sequence[Instance]) -> dict[str, Health]:
        """The inner answer checked: a dict of :class:`Health` by ID."""
        answer = await self._call("status", self.inner.status(instances))
        if answer is None:
            return {}
        if not isinstance(answer, Mapping):
            kind = type(answer).__name__
            raise ProviderError(f"the provider's status returned {kind}, not a mapping of ID to health")
        out: dict[str, Health] = {}
        for key, value in answer.items():
            try:
                out[key] = Health(value.lower() if isinstance(value, str) else value)
            except ValueError:
                raise ProviderError(
                    f"the provider's status said {value!r} of instance {key!r}; expected healthy, broken or gone"
                ) from None
        return out


def _takes_instance_id(provider: Provider) -> bool:
    """Whether ``provider.provision`` accepts the proposed instance ID as its second argument."""
    try:
        params = list(inspect.signature(provider.provision).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2
