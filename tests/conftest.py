"""Shared pytest fixtures."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from plugin_proc import reap

# -- implementations: the compiled hot path and its pure-Python twin ----------------
#
# The compiled case imports the extension modules directly, so a missing or
# broken build is an error here, never a silent fallback to the pure twin.

IMPLEMENTATIONS = {"compiled": "_c", "pure": "_py"}


def load_impl(name: str) -> SimpleNamespace:
    suffix = IMPLEMENTATIONS[name]
    return SimpleNamespace(
        name=name,
        http=importlib.import_module(f"infrakit_instance._http{suffix}"),
        rpc=importlib.import_module(f"infrakit_instance._rpc{suffix}"),
        codec=importlib.import_module(f"infrakit_instance._codec{suffix}"),
    )


@pytest.fixture(scope="session", params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """A namespace with the ``http``, ``rpc`` and ``codec`` modules of one implementation."""
    return load_impl(request.param)


# -- processes: no test leaves a plugin running ---------------------------------------


@pytest.fixture(autouse=True)
def reap_plugins() -> Iterator[None]:
    """Kill, after every test and whatever its outcome, each plugin process it started
    (through ``plugin_proc.spawn``) that is still running."""
    yield
    reap()
