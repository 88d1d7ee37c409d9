"""Independent validation generator: conjugate phantoms, truth on a finer grid, an ODT imaging model.

Written separately from the training generator (``deepis_rt.synth``) so that figures of merit
measured on it are not flattered by shared assumptions; training never imports this package
(a test asserts it). Geometry: :mod:`~deepis_rt.validation.shapes` (implicit surfaces);
scenes and truth: :mod:`~deepis_rt.validation.phantoms`; RI texture:
:mod:`~deepis_rt.validation.texture`; imaging: :mod:`~deepis_rt.validation.optics`.
``benchmarks/is_area_validation.py`` runs the end-to-end validation (RI -> network -> analyze).
"""

from deepis_rt.validation.optics import IMAGING_CONDITIONS, Imaging, image
from deepis_rt.validation.phantoms import SCENE_KINDS, Scene, Truth, make_scene, render_truth

__all__ = ["IMAGING_CONDITIONS", "Imaging", "image", "SCENE_KINDS", "Scene", "Truth", "make_scene", "render_truth"]
