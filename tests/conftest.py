"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import impls
from plugin_proc import reap

# -- implementations: the compiled hot path and its pure-Python twin ----------------
# (see impls.py: the compiled case is skipped, visibly, only in a pure install)


def pytest_addoption(parser: pytest.Parser) -> None:
    impls.add_option(parser)


def pytest_configure(config: pytest.Config) -> None:
    impls.configure(config)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if impls.leave_out(config, benchmarks=False) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    impls.skip_compiled_items(config, items)


@pytest.fixture(scope="session", params=impls.impl_params())
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """A namespace with the ``http``, ``rpc`` and ``codec`` modules of one implementation."""
    return impls.load_impl(request.param)


# -- processes: no test leaves a plugin running ---------------------------------------


@pytest.fixture(autouse=True)
def reap_plugins() -> Iterator[None]:
    """Kill, after every test and whatever its outcome, each plugin process it started
    (through ``plugin_proc.spawn``) that is still running."""
    yield
    reap()
