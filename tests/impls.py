"""Which implementations the test and benchmark suites exercise: the compiled hot
path and its pure-Python twin (the multidict/propcache idiom).

The compiled case imports the extension modules directly, so a broken build is an
error, never a silent fallback.  In a pure install (``INFRAKIT_INSTANCE_NO_EXTENSIONS=1``
at build time) or with ``--no-extensions``, the compiled cases are skipped with a
visible reason instead; ``INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS=1`` (set in CI for the
compiled run) never skips them.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace
from typing import Any

import pytest

__all__ = [
    "IMPLEMENTATIONS",
    "add_option",
    "compiled_modules",
    "compiled_skip_reason",
    "configure",
    "impl_params",
    "leave_out",
    "load_impl",
    "skip_compiled_items",
]

IMPLEMENTATIONS = {"compiled": "_c", "pure": "_py"}
MODULES = ("_http", "_rpc", "_codec", "_conn", "_batch", "_state")
OPTION = "--no-extensions"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def add_option(parser: pytest.Parser) -> None:
    try:
        parser.addoption(
            OPTION,
            action="store_true",
            default=False,
            help="skip the tests of the compiled modules (for a pure install)",
        )
    except ValueError:  # tests/ and benchmarks/ in one run: the other conftest added it
        pass


def compiled_skip_reason(config: pytest.Config) -> str | None:
    """Why the compiled cases are skipped in this run, or None if they run."""
    if _flag("INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS"):
        return None
    if config.getoption(OPTION):
        return f"compiled modules not tested ({OPTION})"
    if _flag("INFRAKIT_INSTANCE_NO_EXTENSIONS"):
        return "compiled modules not tested (INFRAKIT_INSTANCE_NO_EXTENSIONS is set: a pure install)"
    try:
        for name in MODULES:
            importlib.import_module(f"infrakit_instance.{name}_c")
    except ImportError as exc:
        return f"compiled modules not built ({exc}); INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS=1 makes this an error"
    return None


def compiled_modules() -> tuple[Any, ...]:
    """The compiled twins of MODULES, for a test module that needs
    them at import: in a build without them it is skipped (an error with REQUIRE set)."""
    try:
        return tuple(importlib.import_module(f"infrakit_instance.{name}_c") for name in MODULES)
    except ImportError as exc:
        if _flag("INFRAKIT_INSTANCE_REQUIRE_EXTENSIONS"):
            raise
        pytest.skip(f"compiled modules not built ({exc})", allow_module_level=True)


def impl_params() -> list[Any]:
    """The ``impl`` fixture's parameters: the compiled one carries the ``compiled`` marker."""
    return [pytest.param("compiled", marks=pytest.mark.compiled), "pure"]


def load_impl(name: str) -> SimpleNamespace:
    suffix = IMPLEMENTATIONS[name]
    return SimpleNamespace(
        name=name, **{m.lstrip("_"): importlib.import_module(f"infrakit_instance.{m}{suffix}") for m in MODULES}
    )


def leave_out(config: pytest.Config, benchmarks: bool) -> bool:
    """Whether a run without paths (pyproject's testpaths: tests and benchmarks) leaves
    this suite out: plain ``pytest`` is the test run, ``pytest --benchmark-only`` the
    benchmark run.  A suite named on the command line always runs."""
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return False
    return bool(config.getoption("benchmark_only", False)) != benchmarks


def configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compiled: needs the compiled extension modules")


def skip_compiled_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = compiled_skip_reason(config)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("compiled"):
            item.add_marker(skip)
