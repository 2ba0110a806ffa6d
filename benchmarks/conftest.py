"""The implementation fixture for the benchmark suites (kept apart from tests/)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

IMPLEMENTATIONS = {"compiled": "_c", "pure": "_py"}


@pytest.fixture(scope="session", params=list(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """``http``, ``rpc`` and ``codec`` of one implementation; compiled imports fail loudly."""
    suffix = IMPLEMENTATIONS[request.param]
    return SimpleNamespace(
        name=request.param,
        http=importlib.import_module(f"infrakit_instance._http{suffix}"),
        rpc=importlib.import_module(f"infrakit_instance._rpc{suffix}"),
        codec=importlib.import_module(f"infrakit_instance._codec{suffix}"),
    )
