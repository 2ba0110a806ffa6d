"""Example providers shipped with the package (see docs/providers.md).

* :mod:`.flaky_devices`: a Python provider over a rack of simulated devices,
  ``--provider infrakit_instance.examples.flaky_devices:FlakyDevices``;
* ``exec_devices.sh`` and ``exec_devices.json``: the same idea for the ``exec``
  provider, one shell script for every hook.  ``infrakit-instance examples DIR``
  (:func:`copy_examples`) copies them out, ready to run.
"""

from __future__ import annotations

import json
import os
from importlib import resources

__all__ = ["EXEC_FILES", "copy_examples"]

#: The files of the exec example, as ``copy_examples`` writes them.
EXEC_FILES = ("exec_devices.sh", "exec_devices.json")


def copy_examples(directory: str) -> list[str]:
    """Write the exec example into ``directory`` (created if missing): the script,
    and its provider config with the script's absolute path and a devices
    directory beside it.  Never overwrites a file; returns the paths written."""
    directory = os.path.abspath(directory)
    targets = [os.path.join(directory, name) for name in EXEC_FILES]
    existing = [t for t in targets if os.path.lexists(t)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    here = resources.files(__name__)
    script, config = targets
    with open(script, "x") as f:
        f.write(here.joinpath("exec_devices.sh").read_text())
    os.chmod(script, 0o755)
    options = json.loads(here.joinpath("exec_devices.json").read_text())
    for hook in ("provision", "destroy", "status", "validate"):
        options[hook] = f"{script} {hook}"
    options["env"] = {"DEVICES_DIR": os.path.join(directory, "devices")}
    with open(config, "x") as f:
        json.dump(options, f, indent=2)
        f.write("\n")
    return targets
