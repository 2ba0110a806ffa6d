"""Default locations and names, shared by the command line and the state tools."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_NAME", "infrakit_home", "plugins_dir", "state_path"]

#: The plugin's name when none is given: its socket's file name.
DEFAULT_NAME = "instance-py"


def infrakit_home() -> str:
    return os.environ.get("INFRAKIT_HOME") or os.path.join(os.path.expanduser("~"), ".infrakit")


def plugins_dir() -> str:
    """Where InfraKit looks for plugin sockets."""
    return os.environ.get("INFRAKIT_PLUGINS_DIR") or os.path.join(infrakit_home(), "plugins")


def state_path(name: str) -> str:
    return os.path.join(infrakit_home(), "state", f"{name}.json")
