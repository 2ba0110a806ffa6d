"""One sync loop among the replicas of an etcd prefix, elected through a lease.

The replica that creates ``PREFIX/election/sync`` (attached to its lease) runs
the sync with the provider and keeps the lease alive; the others wait for the
key to go (its holder stopped, or died and its lease expired) and try again.
A holder that cannot renew its lease in time stops syncing before the lease
can have expired on the etcd side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .etcd import EtcdStore, describe_error

__all__ = ["Election"]

log = logging.getLogger(__name__)


class Election:
    def __init__(
        self,
        store: Any,
        on_elected: Callable[[], None],
        on_lost: Callable[[], Awaitable[None]],
        ttl: int = 5,
    ) -> None:
        assert isinstance(store, EtcdStore)
        self.store = store
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.ttl = ttl
        self.key = store.prefix + b"/election/sync"
        self.me = f"{socket.gethostname()}:{os.getpid()}".encode()
        self.leader = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="etcd-election")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.leader:
            await self._lose()

    async def _lose(self) -> None:
        self.leader = False
        await self.on_lost()

    async def _run(self) -> None:
        client = self.store.client
        rpc = client.rpc
        timeout = self.store.options.timeout
        while True:
            lease_id = 0
            try:
                grant = await client.leasestub.LeaseGrant(
                    rpc.LeaseGrantRequest(TTL=self.ttl), timeout=timeout, metadata=client.metadata
                )
                lease_id = grant.ID
                granted = time.monotonic()
                txn = rpc.TxnRequest(
                    compare=[
                        rpc.Compare(key=self.key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
                    ],
                    success=[rpc.RequestOp(request_put=rpc.PutRequest(key=self.key, value=self.me, lease=lease_id))],
                    failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=self.key))],
                )
                resp = await client.kvstub.Txn(txn, timeout=timeout, metadata=client.metadata)
                if resp.succeeded:
                    log.info("elected to run the sync loop (lease %x)", lease_id)
                    self.leader = True
                    self.on_elected()
                    await self._hold(lease_id, granted)
                else:
                    await client.leasestub.LeaseRevoke(
                        rpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout, metadata=client.metadata
                    )
                    lease_id = 0
                    held = resp.responses[0].response_range.kvs
                    holder = held[0].value.decode(errors="replace") if held else "?"
                    log.info("the sync loop runs on %s; waiting for it to stop", holder)
                    await self._wait_gone(held[0].mod_revision if held else 0)
            except asyncio.CancelledError:
                if lease_id:
                    try:
                        await client.leasestub.LeaseRevoke(
                            rpc.LeaseRevokeRequest(ID=lease_id), timeout=1.0, metadata=client.metadata
                        )
                    except Exception:
                        pass
                raise
            except Exception as exc:
                log.warning("sync election: %s; trying again", describe_error(exc))
            if self.leader:
                log.warning("lost the sync election: stopping the sync loop")
                await self._lose()
            await asyncio.sleep(0.5)

    async def _hold(self, lease_id: int, granted: float) -> None:
        """Keep the lease alive; return when it cannot be renewed before it may expire."""
        client = self.store.client
        valid_until = granted + self.ttl
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                left = max(valid_until - sent - 0.5, 0.1)
                reply = await asyncio.wait_for(client.refresh_lease(lease_id), left)
                if reply is None or reply.TTL <= 0:
                    return
                valid_until = sent + reply.TTL
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() >= valid_until - 0.5:
                    log.warning("sync election: cannot renew the lease (%s)", describe_error(exc))
                    return

    async def _wait_gone(self, revision: int) -> None:
        client = self.store.client
        watch = await client.watch(self.key, start_revision=revision + 1 if revision else None)
        try:
            async for event in watch:
                if event.kind == "DELETE":
                    return
        finally:
            try:
                await watch.cancel()
            except Exception:
                pass
