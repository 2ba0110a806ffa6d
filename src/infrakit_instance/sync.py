"""Keeping the state in step with the provider (the C plugin's
``synchroniseStateWithProvider``, which it never called).

Every ``interval`` seconds, and whenever :meth:`Syncer.request` is called
(the server does so on SIGHUP and SIGUSR1), the provider is asked for the
health of every instance, active and non-functional:

* a *broken* active instance moves to ``NonFunctional``: it is no longer
  reported, so InfraKit provisions a replacement;
* a non-functional instance reported *healthy* again moves to the FRONT of
  ``Instances`` (recovered ones keep their relative order), so the most
  recently added instance stays the first candidate for removal;
* a *gone* instance is removed, wherever it is.

A provider that raises or hangs costs one sync (the call is bounded by the
provider timeout), is logged, and the plugin keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .provider import Health, Instance, Provider, ProviderError
from .state import Record
from .store import Store, StoreError

__all__ = ["SyncResult", "Syncer"]

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    """What one sync changed, by instance ID, in the order the changes were made."""

    broken: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    #: Why the provider could not be asked (the state was left alone), or None.
    error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.broken or self.restored or self.gone)


def _instance(rec: Record, functional: bool) -> Instance:
    desc = rec.description()
    return Instance(rec.id, desc.get("LogicalID"), desc.get("Tags") or {}, desc.get("Properties"), functional)


class Syncer:
    """Runs syncs: periodically, on request, one at a time."""

    def __init__(self, store: Store, provider: Provider, interval: float = 0.0) -> None:
        self.store = store
        #: Called as is: wrap it in a BoundedProvider to bound and tame it (the server does).
        self.provider = provider
        self.interval = interval
        #: Completed syncs, and the last one's result (for tests and introspection).
        self.runs = 0
        self.last: SyncResult | None = None
        self._lock = asyncio.Lock()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop: a first sync at once when periodic, then every ``interval``."""
        self._wake = asyncio.Event()
        if self.interval > 0:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="infrakit-sync")

    def request(self) -> None:
        """Sync as soon as possible (requests during a sync make one more sync, not one each)."""
        if self._wake is not None:
            log.info("sync requested")
            self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            if self.interval > 0:
                try:
                    await asyncio.wait_for(wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
            else:
                await wake.wait()
            wake.clear()
            try:
                await self.sync_once()
            except Exception:  # a bug here must not end the syncing for good
                log.exception("sync failed")

    # -- one sync -------------------------------------------------------------------

    async def sync_once(self) -> SyncResult:
        async with self._lock:
            result = await self._sync()
        self.runs += 1
        self.last = result
        return result

    async def _sync(self) -> SyncResult:
        state = self.store.state
        instances = [_instance(r, True) for r in state.instances.values()]
        instances += [_instance(r, False) for r in state.nonfunctional.values()]
        result = SyncResult()
        if not instances:
            return result
        try:
            health = await self.provider.status(instances)
        except ProviderError as exc:
            log.warning("sync: could not get the status of %d instances: %s", len(instances), exc)
            result.error = str(exc)
            return result
        # The state may have changed while the provider answered: decide on what it holds now.
        state = self.store.state
        waits: list[tuple[str, asyncio.Future[None]]] = []
        for instance_id, h in health.items():
            if h is Health.GONE and state.known(instance_id):
                log.info("sync: instance %s is gone: removing it", instance_id)
                waits.append((instance_id, self.store.forget(instance_id)))
                result.gone.append(instance_id)
            elif h is Health.BROKEN and instance_id in state.instances:
                log.info("sync: instance %s is broken: moving it to NonFunctional (to be replaced)", instance_id)
                waits.append((instance_id, self.store.set_functional(instance_id, False)))
                result.broken.append(instance_id)
        # Each restore goes to the front: restore in reverse so the recovered keep their order.
        recovered = [i for i in state.nonfunctional if health.get(i) is Health.HEALTHY]
        for instance_id in reversed(recovered):
            log.info("sync: instance %s recovered: moving it to the front of Instances", instance_id)
            waits.append((instance_id, self.store.set_functional(instance_id, True)))
        result.restored = recovered
        unknown = [i for i in health if not state.known(i) and i not in result.gone]
        if unknown:
            log.debug("sync: the provider reported unknown instances %s", ", ".join(unknown))
        for instance_id, fut in waits:
            try:
                await asyncio.shield(fut)  # shared with concurrent changes: never cancel it
            except StoreError as exc:
                log.error("sync: could not record the change to %s: %s", instance_id, exc)
        if not result.changed:
            log.debug("sync: %d instances checked, no change", len(instances))
        return result
