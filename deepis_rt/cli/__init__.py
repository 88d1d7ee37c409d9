"""The ``deepis-rt`` command line. Only this package configures logging output."""

from deepis_rt.cli.main import main

__all__ = ["main"]
