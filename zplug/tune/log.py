"""The trial log of ``zplug tune``: JSON lines, a header with the run's configuration, then one line per trial.

A rerun with the same configuration (seed included) reads the log and skips the trials it holds, so
an interrupted search resumes where it stopped and a finished one can be extended with more trials.
A log written for another configuration is never mixed in: it is an error, unless the run starts
the log afresh (``--overwrite``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from zplug.errors import TrialLogError

FORMAT = 1


@attrs.frozen(kw_only=True)
class TrialRecord:
    """One evaluated parameter set.

    Attributes
    ----------
    number : int or None
        The trial number (0-based); ``None`` for the base preset's defaults.
    params : dict
        The searched parameters' values.
    score : float
        The mean metric score over the data set.
    scores : tuple of float
        The score of each sample.
    seconds : float
        How long the trial took.
    """

    number: int | None
    params: dict[str, Any]
    score: float
    scores: tuple[float, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The log line's data."""
        return {
            "trial": "default" if self.number is None else self.number,
            "params": self.params,
            "score": self.score,
            "scores": list(self.scores),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRecord:
        """Read a log line's data."""
        number = data["trial"]
        return cls(
            number=None if number == "default" else int(number), params=dict(data["params"]),
            score=float(data["score"]), scores=tuple(float(s) for s in data.get("scores", ())),
            seconds=float(data.get("seconds", 0.0)),
        )


class TrialLog:
    """Read, check and extend a trial log.

    Parameters
    ----------
    path : Path
        The log file (created with its parents if missing).
    config : Mapping
        The run's configuration (JSON data); a log with another one is an error.
    restart : bool
        Start the log afresh when it was written for another configuration (instead of an error);
        a log of the same configuration is always resumed.
    """

    def __init__(self, path: Path, config: Mapping[str, Any], *, restart: bool = False) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config)))
        self.default: TrialRecord | None = None
        self.trials: dict[int, TrialRecord] = {}
        if self.path.exists():
            try:
                self._read()
                return
            except TrialLogError:
                if not restart:
                    raise
                self.default, self.trials = None, {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"zplug_tune": FORMAT, "config": self.config}) + "\n", encoding="utf-8")

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("zplug_tune") != FORMAT or "config" not in header:
            raise TrialLogError(f"'{self.path}' is not a zplug tune trial log; choose another output folder")
        old = header["config"]
        differ = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        if differ:
            raise TrialLogError(
                f"'{self.path}' was written for another run (it differs in: {', '.join(differ)}); use another "
                "output folder, or --overwrite to start it afresh"
            )
        kept = [lines[0]]
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                record = TrialRecord.from_json(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):  # a line cut short by an interruption: that trial runs again
                    continue
                raise TrialLogError(f"'{self.path}', line {number}: not a trial record") from None
            kept.append(line)
            if record.number is None:
                self.default = record
            else:
                self.trials[record.number] = record
        self.path.write_text("\n".join(kept) + "\n", encoding="utf-8")

    def append(self, record: TrialRecord) -> None:
        """Add a finished trial (written at once, so an interruption loses at most the running one)."""
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record.to_json()) + "\n")
        if record.number is None:
            self.default = record
        else:
            self.trials[record.number] = record


__all__ = ("TrialLog", "TrialLogError", "TrialRecord")
