"""A pytest plugin for ``benchmarks/gpu_check.sh``: one JSON line per test, written the moment it ends.

JUnit XML is written only when pytest's session ends, so a stage killed at its time limit would
lose every result; these lines survive (the summary reads them). Load it with
``-p gpu_check_pytest`` (``benchmarks/`` on ``sys.path``) and set ``GPU_CHECK_TEST_ROWS`` to the file.
"""

from __future__ import annotations

import json
import os
import time


def pytest_runtest_logreport(report):  # noqa: D103 - pytest hook
    path = os.environ.get("GPU_CHECK_TEST_ROWS")
    if not path:
        return
    # one line per test: its call phase, or the phase that decided it (a failed or skipped setup)
    if report.when != "call" and not (report.failed or report.skipped):
        return
    if report.when == "teardown" and not report.failed:
        return
    message = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.failed:
        message = str(report.longrepr)[-1500:]
    row = {"test": report.nodeid, "phase": report.when, "outcome": report.outcome,
           "duration_s": round(report.duration, 3), "message": message, "time_utc": time.strftime("%H:%M:%S", time.gmtime())}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
