"""The seam between the plugin and where its state lives.

The RPC layer only ever talks to a :class:`Store`: it reads from the
in-memory :class:`~infrakit_instance.state.State` and gets, for every change,
a future that completes once the change is durable.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable

from ..state import Record, State

__all__ = ["Store", "StoreError", "StoreLocked", "UnknownInstance"]


class StoreError(Exception):
    """The store could not persist a change (the change was not made)."""


class StoreLocked(StoreError):
    """Another process has the state file open."""


class UnknownInstance(KeyError):
    """No active instance has this ID."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.instance_id = instance_id

    def __str__(self) -> str:
        return f"unknown instance: {self.instance_id}"


class Store(ABC):
    """What the plugin needs of a backend.  Reads are synchronous and served
    from memory; each change returns a future that is done when it is durable
    (or fails with :class:`StoreError`, in which case it was not made).  That
    future may be shared by every change of a batch: await it (shielded, if
    the awaiting task may be cancelled), never cancel it."""

    #: Set by the server: true while every open connection waits for a change of the store
    #: (none can send a request while a batch syncs), so a backend may make a batch durable
    #: on the event loop instead of handing it to another thread.  None: not known.
    all_waiting: Callable[[], bool] | None = None

    @property
    @abstractmethod
    def state(self) -> State: ...

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None:
        """Write what is pending and release the backend."""

    @abstractmethod
    def provision(self, record: Record, tags: dict[str, str]) -> asyncio.Future[None]:
        """Append a new instance (with these tags, which its brief description holds too)."""

    @abstractmethod
    def destroy(self, instance_id: str) -> asyncio.Future[None]:
        """Raises :class:`UnknownInstance` at once for an unknown ID."""

    @abstractmethod
    def label(self, instance_id: str, labels: dict[str, str]) -> asyncio.Future[None]:
        """Raises :class:`UnknownInstance` at once for an unknown ID."""

    @abstractmethod
    def set_functional(self, instance_id: str, functional: bool) -> asyncio.Future[None]:
        """Move an instance to ``NonFunctional``, or back to the front of ``Instances``."""

    @abstractmethod
    def forget(self, instance_id: str) -> asyncio.Future[None]:
        """Remove an instance, active or not, that the provider says is gone."""

    def describe(self, tags: dict[str, str] | None, properties: bool) -> bytes:
        return self.state.describe(tags, properties)

    def read_barrier(self) -> asyncio.Future[None] | None:
        """None when reads may be served from memory now; else a future done once
        memory has caught up with what the backend acknowledged (a shared backend's
        consistent reads)."""
        return None
