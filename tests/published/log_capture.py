"""Capturing deepis-rt's own warnings in the published-checkpoint tests."""

from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def captured_warnings(caplog):
    """'deepis_rt' warnings into caplog, whatever an earlier CLI invocation did to that logger."""
    logger = logging.getLogger("deepis_rt")
    saved = logger.propagate, logger.level
    logger.propagate = False  # records reach caplog's handler once, here
    logger.setLevel(logging.WARNING)
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = saved[0]
        logger.setLevel(saved[1])
