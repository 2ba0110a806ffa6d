"""The test harness itself: plugins that a test leaves running are killed."""

from __future__ import annotations

import os
from pathlib import Path

import plugin_proc
from plugin_proc import Plugin


def test_reap_kills_a_plugin_left_running(tmp_path: Path) -> None:
    p = Plugin(tmp_path).start()
    assert p.proc is not None
    pid = p.proc.pid
    assert p.proc in plugin_proc.LIVE
    leaked = plugin_proc.reap()
    assert len(leaked) == 1 and "infrakit-instance" in leaked[0]
    assert p.proc.returncode is not None  # reaped: waited for, not a zombie
    assert not plugin_proc.LIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"plugin {pid} still runs after reap()")
