"""Finding a provider by name and building it from its options.

A provider is named on the command line either by ``module:attribute`` (or
``path/to/file.py:attribute``) or by a name registered in the entry-point
group ``infrakit_instance.providers``.  The attribute is a :class:`Provider`
subclass or a factory; either is called with the options dict and must
return a :class:`Provider`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from ..provider import Provider, ProviderError

__all__ = ["GROUP", "ProviderSpecError", "available", "load_provider", "parse_option", "read_options_file"]

#: The entry-point group where packages register providers by name.
GROUP = "infrakit_instance.providers"

# The shipped providers, so their names work from a source tree whose
# package metadata has not been (re)installed.
_BUILTIN = {
    "logical": "infrakit_instance.provider:LogicalProvider",
    "exec": "infrakit_instance.providers.exec:ExecProvider",
}


class ProviderSpecError(Exception):
    """A provider that cannot be found or built; the message says why and what to do."""


def available() -> dict[str, str]:
    """Every provider name, with the ``module:attribute`` it stands for."""
    names = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        names[ep.name] = ep.value
    return names


def _import_target(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ProviderSpecError(f"{target!r} is not of the form module:attribute")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except ProviderSpecError:
        raise
    except ModuleNotFoundError as exc:
        raise ProviderSpecError(f"cannot import {module_name!r}: {exc} (is it installed, or on PYTHONPATH?)") from None
    except Exception as exc:  # the module's own code failed: say how, without a traceback
        raise ProviderSpecError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ProviderSpecError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise ProviderSpecError(f"provider file {path!r} does not exist")
    name = "infrakit_instance_provider_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProviderSpecError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def load_provider(spec: str, options: Mapping[str, Any] | None = None) -> Provider:
    """Build the provider ``spec`` names with ``options``; raise :class:`ProviderSpecError`."""
    spec = spec.strip()
    options = dict(options or {})
    if ":" in spec:
        target = spec
    else:
        names = available()
        if spec not in names:
            raise ProviderSpecError(
                f"no provider named {spec!r}; known names: {', '.join(sorted(names))}"
                " (or give module:attribute, e.g. mypackage.devices:DeviceProvider)"
            )
        target = names[spec]
    factory = _import_target(target)
    if isinstance(factory, Provider):
        if options:
            raise ProviderSpecError(f"{spec!r} is a ready-made provider instance: it cannot take options")
        return factory
    if not callable(factory):
        raise ProviderSpecError(f"{target!r} is neither a Provider subclass nor a factory")
    try:
        provider = factory(options)
    except Exception as exc:  # ProviderError, ValueError...: the provider's own message
        message = str(exc) if str(exc) else type(exc).__name__
        if not isinstance(exc, (ProviderError, ValueError)):
            message = f"{type(exc).__name__}: {message}"
        raise ProviderSpecError(f"provider {spec!r} rejected its options: {message}") from None
    if not isinstance(provider, Provider):
        raise ProviderSpecError(
            f"{target!r} returned {type(provider).__name__};"
            " a provider must subclass infrakit_instance.provider.Provider"
        )
    return provider


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses as JSON, else the string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ProviderSpecError(f"{text!r} is not key=value")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def read_options_file(path: str) -> dict[str, Any]:
    """Provider options from a JSON file, or YAML (``.yaml``/``.yml``) when PyYAML is installed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ProviderSpecError(f"cannot read provider config {path}: {exc.strerror or exc}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ProviderSpecError(
                f"provider config {path} is YAML but PyYAML is not installed: pip install pyyaml, or use JSON"
            ) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProviderSpecError(f"provider config {path} is not valid YAML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ProviderSpecError(f"provider config {path} is not valid JSON: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ProviderSpecError(f"provider config {path} must hold an object of options, not {type(doc).__name__}")
    return doc
