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


#: Every allocation of 64 KiB or more gets pages of its own, returned when it is freed: the resident peak is then
#: the peak of live tensors. With glibc's default (a threshold that grows, freed memory kept for reuse) the same
#: call's peak moved by up to 150 MB between processes, depending on where buffers landed.
EXACT = {"MALLOC_MMAP_THRESHOLD_": str(2**16)}


def probe_memory(script: str, args: Mapping[str, Sequence[str]], env: Mapping[str, str] | None = None) -> dict:
    """Run ``script ARGS`` in a fresh process per name; each prints ``{"bytes": N}`` last.

    The processes get the default allocator, with ``env`` added (:data:`EXACT` for the peak of live tensors).

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


#: The transformer targets: zplug's time at most LXT's for the same relevance and 1.5× the plain gradient's.
TARGETS = {"LXT": 1.0, "gradient": 1.5}


def verdicts(results: Sequence[dict], lxt_names: Mapping[str, str], label: Callable[[dict], str]) -> list[str]:
    """One line per case and preset (keys of ``lxt_names``): ratios against :data:`TARGETS` on CPU time, wall
    time in brackets, and memory against LXT's. ``label(result)`` names the case."""
    import statistics

    lines = ["Targets (judged on CPU time, wall time in brackets): zplug ≤ 1.0× LXT's time for the same relevance, "
             "≤ 1.5× the plain gradient's, extra memory ≤ LXT's.", ""]
    for res in results:
        wall = {key: statistics.median(values) for key, values in res["times"].items()}
        cpu = {key: statistics.median(values) for key, values in res["cpu"].items()}
        memory = res.get("memory", {})
        for preset, theirs in lxt_names.items():
            ours = f"zplug {preset}"
            parts = []
            for target, other in (("LXT", theirs), ("gradient", "gradient")):
                ratio = cpu[ours] / cpu[other]
                mark = "✓" if ratio <= TARGETS[target] else "✗"
                parts.append(f"{ratio:.2f}× {target} ({wall[ours] / wall[other]:.2f}×) {mark}")
            if ours in memory and theirs in memory:
                mark = "✓" if memory[ours] <= memory[theirs] else "✗"
                parts.append(f"memory {memory[ours]:.0f} / {memory[theirs]:.0f} MB {mark}")
            lines.append(f"* {label(res)} `{preset}`: " + ", ".join(parts))
    return lines
