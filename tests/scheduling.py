"""`make test`'s order of work for pytest-xdist's `--dist loadfile`: the longest first.

xdist hands each worker one file (a "scope") at a time, by default in order of their number of
tests, so the files with few but slow tests (a child process, a chapter) came last and one
worker could still run them for minutes after the other had finished. `HeaviestFirst` hands out
the file expected to take longest (longest-processing-time-first: the short files at the end
fill in, and the two workers finish together), and keeps the modules that share the eight-device
child process (`tests/subprocess_devices.py`) on one worker, as one scope.

Expected seconds per file come from `_build/test_seconds.json`, which every `make test` writes
(measured: setup + call + teardown of each test, per file), else from the committed
`tests/test_seconds.json` (a fresh clone's `make test` on the 2-core machine; refresh it by
copying the `_build` file after a full run); a file in neither counts 0.2 s a test.
"""
from __future__ import annotations

import json
import pathlib

from xdist.scheduler import LoadFileScheduling

from tests.subprocess_devices import EIGHT_DEVICE_MODULES

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "tests" / "test_seconds.json"
MEASURED = ROOT / "_build" / "test_seconds.json"
EIGHT_DEVICES = "eight-device child: " + " ".join(EIGHT_DEVICE_MODULES)


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def expected_seconds() -> dict:
    for path in (MEASURED, COMMITTED):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return {}


class HeaviestFirst(LoadFileScheduling):
    """`--dist loadfile`, the files expected to take longest first (see the module docstring)."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.seconds = expected_seconds()

    def _split_scope(self, nodeid: str) -> str:
        f = file_of(nodeid)
        return EIGHT_DEVICES if f in EIGHT_DEVICE_MODULES else f

    def _expected(self, scope: str, tests: dict) -> float:
        files = EIGHT_DEVICE_MODULES if scope == EIGHT_DEVICES else (scope,)
        known = [self.seconds[f] for f in files if f in self.seconds]
        if len(known) == len(files):
            return sum(known)
        return sum(known) + 0.2 * len(tests)

    def heaviest(self) -> str:
        """The waiting scope expected to take longest (the first of equals)."""
        return max(self.workqueue, key=lambda s: self._expected(s, self.workqueue[s]))

    def _assign_work_unit(self, node) -> None:
        self.workqueue.move_to_end(self.heaviest(), last=False)
        super()._assign_work_unit(node)


class Recorder:
    """On the controlling process: sums each file's test durations; written when the session
    ends (to `_build/test_seconds.json`, merged with what is there)."""

    def __init__(self):
        self.seconds: dict = {}

    def pytest_runtest_logreport(self, report):
        f = file_of(report.nodeid)
        self.seconds[f] = self.seconds.get(f, 0.0) + report.duration

    def pytest_sessionfinish(self, session, exitstatus):
        if not self.seconds:
            return
        old = expected_seconds() if MEASURED.exists() else {}
        old.update({k: round(v, 1) for k, v in self.seconds.items()})
        MEASURED.parent.mkdir(parents=True, exist_ok=True)
        MEASURED.write_text(json.dumps(dict(sorted(old.items())), indent=1) + "\n")
