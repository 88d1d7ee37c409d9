"""The ``--backend`` option of every command: its choices are the backend registry's, read when used.

The registry (:mod:`deepis_rt.backends.registry`) is imported only when a value is checked or the
help is shown, so ``deepis-rt --help`` stays fast, and a backend registered after this module was
imported (a plugin, a test) is a valid choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["BackendName", "backend_option"]


class BackendName(click.Choice):
    """``click.Choice`` over the registered backend names (``remote=False``: local backends only)."""

    name = "backend"

    def __init__(self, remote: bool = True) -> None:  # noqa: D107 - the choices are read on use
        self.remote = remote
        self.case_sensitive = True

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        from deepis_rt.backends import registry  # imports every runner module: only when needed

        return registry.choices(remote=self.remote)


def backend_option(remote: bool = True, help: str | None = None) -> Callable[[Any], Any]:
    """``--backend`` (default ``auto``): a backend, a family of them, or ``auto``."""
    text = help or "auto (the fastest that works here), a family of backends, or one backend."
    return click.option("--backend", type=BackendName(remote=remote), default="auto", show_default=True, help=text)
