"""The shared helpers of deepis_rt.core: one Dice, one distance comparison, one JSON cleaner, labels."""

import json
import math
import subprocess
import sys
from enum import IntEnum

import numpy as np
import pytest

from deepis_rt.core.jsonable import json_safe
from deepis_rt.core.labels import labels_from_distance
from deepis_rt.core.metrics import distance_errors


def test_distance_errors_on_known_maps():
    ref = np.zeros((2, 1, 4, 4, 4), np.float32)
    ref[0, 0, 0, 0, 0] = -3.0
    test = ref.copy()
    test[1] += 0.5  # half the voxels off by 0.5
    test[0, 0, 0, 0, 1] = 2.0  # one voxel off by 2
    e = distance_errors(ref, test)
    assert e.max_abs_um == 2.0 and e.ref_max_abs_um == 3.0
    assert e.median_abs_um == pytest.approx(0.5)  # 63 voxels off by 0, 64 by 0.5, one by 2
    assert e.p99_abs_um == pytest.approx(0.5)
    assert distance_errors(np.zeros(0), np.zeros(0)).max_abs_um == 0.0
    with pytest.raises(ValueError, match=r"shape \(3,\) differs from the reference \(2,\)"):
        distance_errors(np.zeros(2), np.zeros(3))


class _Level(IntEnum):
    HIGH = 2


def test_json_safe_makes_plain_json():
    value = {"a": (np.float32(1.5), np.int64(3)), 7: [float("nan"), float("inf")], "ok": True,
             "flag": np.bool_(False), "level": _Level.HIGH, "nested": {"x": np.array(2.0)}}
    clean = json_safe(value)
    assert clean == {"a": [1.5, 3], "7": [None, None], "ok": True, "flag": False, "level": 2,
                     "nested": {"x": 2.0}}
    assert type(clean["ok"]) is bool and type(clean["flag"]) is bool and type(clean["level"]) is int
    json.dumps(clean, allow_nan=False)  # strictly valid JSON
    kept = json_safe([float("nan")], nonfinite_to_none=False)
    assert math.isnan(kept[0])


def test_labels_from_distance_is_the_runtime_function():
    import deepis_rt.runtime as runtime
    from deepis_rt.runtime import result

    assert runtime.labels_from_distance is labels_from_distance is result.labels_from_distance
    d = np.zeros((4, 8, 8), np.float32)
    d[:, :, :3] = 1.0
    d[:, :, 5:] = -1.0
    labels = labels_from_distance(d, (0.5, 0.25, 0.25))
    assert set(np.unique(labels)) == {1, 2, 3}  # both cells, and the IS where their dilations meet


def test_core_imports_nothing_else_from_the_package():
    code = ("import sys, deepis_rt.core.meta, deepis_rt.core.labels, deepis_rt.core.metrics, "
            "deepis_rt.core.stats, deepis_rt.core.machine, deepis_rt.core.jsonable\n"
            "print(sorted(m for m in sys.modules if m.startswith('deepis_rt')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    listed, torch_loaded = out.rsplit(" ", 1)
    loaded = set(eval(listed))
    assert loaded <= {"deepis_rt", "deepis_rt._version", "deepis_rt.errors", "deepis_rt.core",
                      *(f"deepis_rt.core.{m}" for m in ("meta", "labels", "metrics", "stats", "machine",
                                                        "jsonable"))}, loaded
    assert torch_loaded.strip() == "False"
