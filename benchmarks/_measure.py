"""What the benchmark scripts share: memory probes in fresh processes, re-executing with a steady allocator,
and replacing a script's own section of docs/benchmarks.md."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: glibc without trimming and mmap-backed blocks: no fresh pages per call, so timings count work.
STEADY = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_MAX_": "0"}
#: OpenMP threads that sleep while waiting: on a shared machine spin-waiting costs a time slice per operator.
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def extra_peak(call: Callable[[], object]) -> int:
    """Peak extra resident memory (bytes) of one ``call`` after a warm-up call, in this (fresh) process."""
    call()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    call()
    return status_bytes("VmHWM") - before


def probe_memory(script: str, args: Mapping[str, Sequence[str]], env: Mapping[str, str] | None = None) -> dict:
    """Run ``script ARGS`` in a fresh process per name (default allocator); each prints ``{"bytes": N}`` last.

    Returns ``{name: megabytes}``, NaN where the probe failed (its error is printed).
    """
    base = {k: v for k, v in os.environ.items() if k not in STEADY}
    out = {}
    for name, argv in args.items():
        result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True,
                                env={**base, **(env or {})}, check=False)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            out[name] = float("nan")
            continue
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])["bytes"] / 2**20
    return out


def reexec(script: str, argv: Sequence[str], wanted: Mapping[str, str]) -> None:
    """Re-execute ``script`` with the environment ``wanted`` added, unless it is set (glibc settings on glibc only)."""
    wanted = {k: v for k, v in wanted.items() if k not in STEADY or platform.libc_ver()[0] == "glibc"}
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    os.execve(sys.executable, [sys.executable, script, *argv], {**os.environ, **wanted})


def replace_section(doc: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the old one in ``doc``."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")
