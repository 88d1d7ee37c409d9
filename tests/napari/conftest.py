"""napari plugin fixtures: a real results folder (session-wide), and the conditions of the widget tests.

Widget tests need napari, pytest-qt and an X display with OpenGL (napari draws with OpenGL, which
Qt's ``offscreen`` platform does not provide with the PyQt6 wheels): CI runs them under Xvfb
(pytest-xvfb starts one); without these they are skipped, saying which is missing.
"""

from __future__ import annotations

import pytest
from napari_support import make_run


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(camera folder, results folder, synthetic frames) of a 4-frame ``stream --once`` run."""
    return make_run(tmp_path_factory.mktemp("run"), 4)
