"""The provider API: where a plugin meets real infrastructure.

A provider is told about every change the plugin makes and asked about the
health of what it made.  The default, :class:`LogicalProvider`, keeps
instances in the state file only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LogicalProvider", "Provider", "ProviderError", "Provisioned"]


class ProviderError(Exception):
    """The provider refused or failed; the message reaches the InfraKit user."""


@dataclass
class Provisioned:
    """What a provider says of a new instance: its ID (None: let the plugin choose)
    and extra tags to record with it."""

    id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


class Provider:
    """Base class: every hook is optional and does nothing by default."""

    #: True when every hook is a no-op, so the plugin may skip awaiting them.
    logical = False

    async def start(self) -> None:
        """Called once before the plugin serves."""

    async def stop(self) -> None:
        """Called once when the plugin shuts down."""

    async def validate(self, properties: Any) -> None:
        """Raise :class:`ProviderError` if ``properties`` cannot be provisioned."""

    async def provision(self, spec: dict[str, Any]) -> Provisioned | None:
        """Create the instance described by ``spec``."""
        return None

    async def destroy(self, instance_id: str, description: dict[str, Any], context: dict[str, Any]) -> None:
        """Remove the instance; ``context`` holds InfraKit's reason when it gives one."""

    async def label(self, instance_id: str, labels: dict[str, str]) -> None:
        """Apply tags to the real instance, if the infrastructure has such a thing."""


class LogicalProvider(Provider):
    """Instances that exist in the state file only."""

    logical = True
