"""An example provider: a rack of physical devices, simulated by files.

Each file ``NAME.device`` in the ``dir`` option is a device; its content is
its health, ``healthy`` or ``broken`` (edit it to make the device fail or
recover; delete it to unplug the device).  Provisioning claims the first free
device (``NAME.claim`` holds the Spec it serves) and names the instance after
it; destroying releases it.

Run it::

    mkdir -p /tmp/rack && for d in a b c; do echo healthy > /tmp/rack/dev-$d.device; done
    infrakit-instance --provider infrakit_instance.examples.flaky_devices:FlakyDevices \\
        --provider-opt dir=/tmp/rack --sync-interval 5

then ``echo broken > /tmp/rack/dev-b.device`` and watch dev-b leave
DescribeInstances (and InfraKit provision a replacement) within 5 seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from infrakit_instance.provider import Health, Instance, Provider, ProviderError, Provisioned


class FlakyDevices(Provider):
    """Provisions instances onto a fixed pool of devices and reports their health."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        directory = self.options.get("dir")
        if not isinstance(directory, str) or not os.path.isdir(directory):
            raise ProviderError(f"give the devices directory as the dir option (got {directory!r})")
        unknown = set(self.options) - {"dir"}
        if unknown:
            raise ProviderError(f"unknown options: {', '.join(sorted(unknown))}")
        self.dir = directory
        # Provisions run concurrently: one claim at a time keeps two from taking the same device.
        self._claiming = asyncio.Lock()

    def _path(self, name: str, kind: str) -> str:
        return os.path.join(self.dir, f"{name}.{kind}")

    async def validate(self, properties: Any) -> None:
        if properties is not None and not isinstance(properties, dict):
            raise ProviderError("Properties must be an object")

    async def provision(self, spec: dict[str, Any], instance_id: str | None = None) -> Provisioned:
        # A device has a name of its own: the instance is named after it, not the proposed ID.
        async with self._claiming:
            # File system calls block: keep them off the event loop.
            name = await asyncio.to_thread(self._claim, spec)
        return Provisioned(id=name, tags={"device": name})

    def _claim(self, spec: dict[str, Any]) -> str:
        for entry in sorted(os.listdir(self.dir)):
            if not entry.endswith(".device"):
                continue
            name = entry[: -len(".device")]
            try:
                fd = os.open(self._path(name, "claim"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(spec, f)
            return name
        raise ProviderError(f"no free device in {self.dir}: add a NAME.device file")

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        try:
            os.unlink(self._path(instance_id, "claim"))
        except FileNotFoundError:
            pass  # already released: destroying twice is not an error

    async def status(self, instances: Sequence[Instance]) -> Mapping[str, Health]:
        return await asyncio.to_thread(self._health, [i.id for i in instances])

    def _health(self, ids: list[str]) -> dict[str, Health]:
        health = {}
        for instance_id in ids:
            try:
                with open(self._path(instance_id, "device")) as f:
                    word = f.read().strip()
            except FileNotFoundError:
                health[instance_id] = Health.GONE
                if os.path.exists(self._path(instance_id, "claim")):
                    os.unlink(self._path(instance_id, "claim"))  # the device may come back, free
                continue
            health[instance_id] = Health.BROKEN if word == "broken" else Health.HEALTHY
        return health
