#!/usr/bin/env python3
"""ceiling: build and run the trivial C epoll server of ``ceiling.c``, the yardstick a plugin is put beside.

It answers every HTTP/1.1 request with the same Validate result (its id echoed), keep-alive, all
answers of one read in one write: what the kernel and a minimal parse allow, not a plugin. The binary is
built on first use with ``$CC`` (default ``cc``) ``-O2`` into a cache directory outside the repository
(``$XDG_CACHE_HOME/infrakit-instance``, else ``~/.cache/infrakit-instance``, else the temp directory),
named after a hash of the source and the compiler, so an edited ``ceiling.c`` is rebuilt.

    python benchmarks/ceiling.py --listen unix:///path/to/socket
    python benchmarks/compare.py --target ceiling='python benchmarks/ceiling.py --listen unix://{socket}' ...
    python benchmarks/ceiling.py --build     # build only; print the binary's path

Running, the process becomes the C server (exec), so its pid is the one that listens.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["SOURCE", "BuildError", "binary_path", "build", "compiler", "main"]

SOURCE = Path(__file__).resolve().with_name("ceiling.c")


class BuildError(Exception):
    """No C compiler, or the compiler failed."""


def compiler() -> list[str] | None:
    """The C compiler's command (``$CC``, else ``cc``), or None when none is installed."""
    cmd = shlex.split(os.environ.get("CC") or "cc")
    return cmd if cmd and shutil.which(cmd[0]) else None


def _cache_dir() -> Path:
    for base in (os.environ.get("XDG_CACHE_HOME"), os.path.expanduser("~/.cache")):
        if base and not base.startswith("~"):
            d = Path(base) / "infrakit-instance"
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
            if os.access(d, os.W_OK):
                return d
    d = Path(tempfile.gettempdir()) / f"infrakit-instance-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def binary_path(cc: list[str] | None = None) -> Path:
    """Where the binary for this source and compiler lives (built or not)."""
    cc = cc or compiler() or ["cc"]
    digest = hashlib.sha256(SOURCE.read_bytes() + b"\0" + " ".join(cc).encode()).hexdigest()[:16]
    return _cache_dir() / f"ceiling-{digest}"


def build() -> Path:
    """The binary, compiled first if this source has not been yet (atomically: never a half-written one)."""
    cc = compiler()
    if cc is None:
        raise BuildError(f"no C compiler: {os.environ.get('CC') or 'cc'} is not installed (set CC)")
    out = binary_path(cc)
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
    os.close(fd)
    try:
        p = subprocess.run([*cc, "-O2", "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if p.returncode != 0:
            raise BuildError(f"{' '.join(cc)} failed on {SOURCE}:\n{p.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ceiling.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", help="unix:///path or tcp://host:port")
    p.add_argument("--build", action="store_true", help="build only, and print the binary's path")
    args = p.parse_args(argv)
    try:
        exe = build()
    except (BuildError, OSError) as e:
        print(f"ceiling: {e}", file=sys.stderr)
        return 2
    if args.build:
        print(exe)
        return 0
    if not args.listen:
        p.error("--listen is needed (or --build)")
    listen = args.listen if args.listen.startswith(("unix://", "tcp://")) else f"unix://{args.listen}"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [str(exe), listen])


if __name__ == "__main__":
    sys.exit(main())
