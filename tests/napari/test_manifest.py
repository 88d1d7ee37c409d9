"""The npe2 manifest: valid, every command importable, shipped with the package and declared."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import deepis_rt.napari

MANIFEST = Path(deepis_rt.napari.__file__).with_name("napari.yaml")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("npe2") is None,
                                reason="needs npe2 (pip install 'deepis-rt[napari]')")


def test_manifest_is_valid_and_its_commands_import():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()  # every python_name resolves
    contrib = manifest.contributions
    assert {r.command for r in contrib.readers} == {"deepis-rt.get_results_reader", "deepis-rt.get_tomogram_reader"}
    assert [r.accepts_directories for r in contrib.readers] == [True, False]
    assert [s.key for s in contrib.sample_data] == ["conjugate"]
    assert len(contrib.widgets) == 3


def test_npe2_validate_command_accepts_the_manifest():
    from npe2.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["validate", str(MANIFEST)])
    assert res.exit_code == 0 and "valid" in res.output


def test_manifest_is_package_data_with_an_entry_point():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["napari.manifest"] == {"deepis-rt": "deepis_rt.napari:napari.yaml"}
    assert "napari/napari.yaml" in meta["tool"]["setuptools"]["package-data"]["deepis_rt"]
    assert any(req.startswith("napari[pyqt6]>=0.9") for req in meta["project"]["optional-dependencies"]["napari"])
