"""The reproducibility record of a run (``summary.json`` -> ``reproducibility``).

What it holds (docs/results.md, "The reproducibility record"): the versions of deepis-rt and of every
inference library, the backend, precision and device actually used, the command and every one of its
settings, the stream's settings, the host's CPU and GPUs, and the size and time stamp of each input
file. ``deepis-rt stream --config summary.json`` (and ``batch``) reads ``command.options`` back.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_record", "input_files", "host_record"]

#: Version of the record's layout; a later deepis-rt reads older ones.
RECORD_VERSION = 1


@functools.lru_cache(maxsize=1)
def host_record() -> dict[str, Any]:
    """The host and the library versions (read once per process; no library imported to read them)."""
    from deepis_rt.core.machine import describe_host, package_versions

    host = describe_host()
    host.pop("load_average_1m", None)
    versions = package_versions()
    try:
        import torch

        versions["cuda"] = str(torch.version.cuda or "-")
    except Exception:
        versions["cuda"] = "-"
    return {"host": host, "versions": versions}


def _iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc).isoformat()


def input_files(folder: Path | None, sources: Iterable[str]) -> list[dict[str, Any]]:
    """Size and modification time of each source file (a multi-time-point file once)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for source in sources:
        name = source.split(":t")[0] if folder is not None else source
        if name in seen or name.startswith("memory:"):
            continue
        seen.add(name)
        entry: dict[str, Any] = {"file": name, "size_bytes": None, "modified": None}
        if folder is not None:
            try:
                st = (folder / name).stat()
                entry.update(size_bytes=st.st_size, modified=_iso(st.st_mtime))
            except OSError:
                pass  # moved or deleted since: recorded without size
        out.append(entry)
    return out


def _settings(settings: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(settings):
        return dataclasses.asdict(settings)
    return dict(settings or {})


def run_record(segmenter: Any, settings: Any, command: Mapping[str, Any] | None,
               source: Path | None, sources: Iterable[str]) -> dict[str, Any]:
    """The ``reproducibility`` block of a stream's ``summary.json``.

    Parameters
    ----------
    segmenter : Segmenter
        What ran (its ``describe()`` names backend, precision and device).
    settings : StreamSettings or mapping
        The stream's settings.
    command : mapping or None
        ``{"name", "argv", "options"}`` of the CLI command (:func:`deepis_rt.cli.run_options.command_record`);
        None for a stream made from Python.
    source : Path or None
        The source folder.
    sources : iterable of str
        ``frames.csv`` sources of the frames processed.
    """
    from deepis_rt import __version__

    described: dict[str, Any] = {}
    try:
        described = dict(segmenter.describe())
    except Exception:  # a stand-in segmenter in a test, a runner that cannot describe itself
        described = {"backend": getattr(segmenter, "backend", None), "device": getattr(segmenter, "device", None)}
    host = host_record()
    return {
        "record_version": RECORD_VERSION,
        "deepis_rt": __version__,
        "versions": dict(host["versions"]),
        "used": {"backend": described.get("backend"), "precision": described.get("precision"),
                 "device": described.get("device"), "model": described.get("model")},
        "command": dict(command) if command is not None else None,
        "settings": _settings(settings),
        "host": host["host"],
        "inputs": input_files(source, sources),
    }
