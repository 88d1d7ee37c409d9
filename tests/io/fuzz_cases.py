"""A catalogue of malformed, lying and hostile input files, each with what a correct reader does with it.

Every case builds its file itself (nothing is downloaded) and says either which refusal it must get
(a regular expression the one-line message must match) or what the reader must return. Files that
are not what their name says hold :data:`SECRET`, which must never reach an error message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import tifffile
from tcf_helpers import write_classic_tcf

SECRET = b"root:x:0:0:SECRET-CONTENT:/root:/bin/bash\n"
VS = (0.5, 0.25, 0.25)
SHAPE = (6, 12, 12)


def good_ri(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.337 + 0.03 * rng.random(shape)).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """``build(folder) -> path``; ``refuse``: regex of the refusal, or None when the file must read as
    ``expect`` (a (Z, Y, X) volume per time point) with ``voxel`` as its voxel size."""

    name: str
    build: Callable[[Path], Path]
    refuse: str | None = None
    expect: Callable[[], list[np.ndarray]] | None = None
    voxel: tuple[float, float, float] | None = VS
    override: tuple[float, float, float] | None = None
    times: list[float | None] | None = None


# --------------------------------------------------------------------------- TIFF
def ome_xml(sizes: dict[str, object] | None = None, physical: dict[str, object] | None = None,
            unit: str = "&#181;m", planes: int | None = None) -> str:
    physical = {"Z": VS[0], "Y": VS[1], "X": VS[2]} if physical is None else physical
    size = {"X": SHAPE[2], "Y": SHAPE[1], "C": 1, "Z": SHAPE[0], "T": 1, **(sizes or {})}
    attrs = " ".join(f'Size{k}="{v}"' for k, v in size.items())
    attrs += "".join(f' PhysicalSize{k}="{v}" PhysicalSize{k}Unit="{unit}"' for k, v in physical.items())
    count = planes if planes is not None else SHAPE[0]
    return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="float" {attrs}>'
            f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="{count}"/>'
            "</Pixels></Image></OME>")


def ome_tiff(data: np.ndarray | None = None, **kwargs: object) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "frame.ome.tif"
        arr = good_ri() if data is None else data
        tifffile.imwrite(path, arr, description=ome_xml(**kwargs), metadata=None)
        return path

    return build


def imagej_tiff(description: dict[str, object], pixel_um: float = VS[1], data: np.ndarray | None = None,
                ) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "frame.tif"
        fields = {"ImageJ": "1.11a", "images": SHAPE[0], "slices": SHAPE[0], "spacing": VS[0], "unit": "micron",
                  **description}
        text = "".join(f"{k}={v}\n" for k, v in fields.items() if v is not None)
        arr = good_ri() if data is None else data
        tifffile.imwrite(path, arr, description=text, metadata=None, resolution=(1 / pixel_um, 1 / pixel_um))
        return path

    return build


def written_tiff(**kwargs: object) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "frame.tif"
        data = kwargs.pop("data", None)
        tifffile.imwrite(path, good_ri() if data is None else data, **kwargs)
        return path

    return build


def tiff_tag_lie(**tags: int) -> Callable[[Path], Path]:
    """A plain TIFF whose pages declare another size than their data."""
    def build(folder: Path) -> Path:
        path = written_tiff(metadata=None)(folder)
        with tifffile.TiffFile(path, mode="r+b") as tif:
            for page in tif.pages:
                for tag, value in tags.items():
                    page.tags[tag].overwrite(value)
        return path

    return build


def truncated_tiff(keep: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = ome_tiff()(folder)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return build


# --------------------------------------------------------------------------- NumPy
def npy(data: object = None, sidecar: object = None, raw_sidecar: bytes | None = None,
        name: str = "frame.npy", allow_pickle: bool = False) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        np.save(path, good_ri() if data is None else data, allow_pickle=allow_pickle)
        side = path.with_suffix(".json")
        if raw_sidecar is not None:
            side.write_bytes(raw_sidecar)
        elif sidecar is not None:
            side.write_text(json.dumps(sidecar))  # json.dumps writes NaN / Infinity as JavaScript does
        return path

    return build


def sidecar(**fields: object) -> Callable[[Path], Path]:
    return npy(sidecar={"voxel_size_um": list(VS), **fields})


def npy_header_lie(shape: tuple[int, ...]) -> Callable[[Path], Path]:
    """A .npy whose header declares ``shape`` over the data of a small volume."""
    def build(folder: Path) -> Path:
        path = folder / "frame.npy"
        ri = good_ri()
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
            fh.write(ri.tobytes())
        path.with_suffix(".json").write_text(json.dumps({"voxel_size_um": list(VS)}))
        return path

    return build


def npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "frame.npz"
        np.savez(path, **arrays)
        path.with_suffix(".json").write_text(json.dumps({"voxel_size_um": list(VS)}))
        return path

    return build


def content(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


# --------------------------------------------------------------------------- TCF
def tcf(attrs: dict[str, dict[str, object]] | None = None, times: list[float] | None = None,
        n: int = 2) -> Callable[[Path], Path]:
    """A classic TCF of ``n`` time points with attributes overwritten (``{"Data/3D": {"ResolutionX": ...}}``)."""
    def build(folder: Path) -> Path:
        path = folder / "cells.TCF"
        write_classic_tcf(path, [good_ri(seed=t) for t in range(n)], as_uint16=True)
        with h5py.File(path, "r+") as f:
            for group, values in (attrs or {}).items():
                for key, val in values.items():
                    f[group].attrs[key] = val
            for t, val in enumerate(times or []):
                f[f"Data/3D/{t:06d}"].attrs["Time"] = np.array([val])
        return path

    return build


def tcf_expect(n: int = 2) -> Callable[[], list[np.ndarray]]:
    return lambda: [(np.round(good_ri(seed=t) * 10000) / 10000).astype(np.float32) for t in range(n)]


# --------------------------------------------------------------------------- MATLAB
def mat(variables: dict[str, object]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "frame.mat"
        scipy.io.savemat(path, variables)
        return path

    return build


def mat73(data: np.ndarray) -> Callable[[Path], Path]:
    """MATLAB 7.3: HDF5 after a 512-byte header, the variable stored transposed (column-major)."""
    def build(folder: Path) -> Path:
        path = folder / "frame.mat"
        with h5py.File(path, "w", userblock_size=512) as f:
            f.create_dataset("input", data=np.ascontiguousarray(data.T))
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116))
        return path

    return build


def symlink_outside(folder: Path) -> Path:
    secret = folder.parent / f"{folder.name}-outside" / "passwd"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(SECRET * 4)
    link = folder / "frame.tif"
    os.symlink(secret, link)
    return link


def _matlab_order(ri: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(ri, 0, 2))  # (Z, Y, X) -> MATLAB (Y, X, Z)


_RI = good_ri
_NM = r"nanometres: in micrometres that is \[0\.4, 0\.2, 0\.2\]"
_MM = r"millimetres: in micrometres that is \[0\.4, 0\.2, 0\.2\]"
_RANGE = r"outside what an optical microscope produces \(0\.02-5 um"
_DECLARES = r"declares .* the file holds"

CASES: list[Case] = [
    # ---- TIFF: good files, read correctly
    Case("ome_tiff_good", ome_tiff(), expect=lambda: [_RI()]),
    Case("ome_tiff_in_nm_unit", ome_tiff(physical={"Z": 500, "Y": 250, "X": 250}, unit="nm"), expect=lambda: [_RI()]),
    Case("imagej_tiff_good", imagej_tiff({}), expect=lambda: [_RI()]),
    Case("imagej_tiff_in_nm_unit", imagej_tiff({"spacing": 500, "unit": "nm"}, pixel_um=250), expect=lambda: [_RI()]),
    Case("imagej_hyperstack_two_time_points", imagej_tiff({"images": 12, "frames": 2, "hyperstack": "true"},
                                                          data=np.concatenate([_RI(), _RI(seed=1)])),
         expect=lambda: [_RI(), _RI(seed=1)]),
    Case("tiff_uint16_ri_x10000", written_tiff(data=np.round(_RI() * 10000).astype(np.uint16), metadata=None),
         expect=lambda: [(np.round(_RI() * 10000) / 10000).astype(np.float32)], voxel=None, override=VS),
    Case("tiff_without_metadata_and_a_voxel_size_given", written_tiff(metadata=None), expect=lambda: [_RI()],
         override=VS),
    Case("ome_tiff_wrong_voxel_size_overridden", ome_tiff(physical={"Z": 400, "Y": 200, "X": 200}),
         expect=lambda: [_RI()], override=VS),
    # ---- TIFF: voxel sizes in the wrong unit or not numbers
    Case("ome_physical_size_in_nm_labelled_um", ome_tiff(physical={"Z": 400, "Y": 200, "X": 200}), _NM),
    Case("ome_physical_size_in_mm_labelled_um", ome_tiff(physical={"Z": 0.0004, "Y": 0.0002, "X": 0.0002}), _MM),
    Case("ome_physical_size_nan", ome_tiff(physical={"Z": "NaN", "Y": 0.25, "X": 0.25}), "positive numbers"),
    Case("ome_physical_size_text", ome_tiff(physical={"Z": "half", "Y": 0.25, "X": 0.25}),
         r"PhysicalSizeZ = 'half' is not a number"),
    Case("ome_physical_size_negative", ome_tiff(physical={"Z": -0.5, "Y": 0.25, "X": 0.25}), "positive numbers"),
    Case("ome_physical_size_zero", ome_tiff(physical={"Z": 0, "Y": 0.25, "X": 0.25}), "positive numbers"),
    Case("ome_physical_size_10_um", ome_tiff(physical={"Z": 10, "Y": 0.25, "X": 0.25}), _RANGE),
    Case("imagej_spacing_in_nm", imagej_tiff({"spacing": 400}), r"nanometres: in micrometres that is \[0\.4, 0\.25"),
    Case("imagej_pixel_in_mm", imagej_tiff({}, pixel_um=0.0002), r"millimetres"),
    # ---- TIFF: declared shape against the pages present
    Case("ome_size_z_more_than_pages", ome_tiff(sizes={"Z": 99}, planes=99), _DECLARES),
    Case("ome_size_z_fewer_than_pages", ome_tiff(sizes={"Z": 3}, planes=3), _DECLARES),
    Case("ome_size_t_lies", ome_tiff(sizes={"Z": 6, "T": 4}, planes=24), _DECLARES),
    Case("ome_size_z_not_a_number", ome_tiff(sizes={"Z": "six"}), r"SizeZ = 'six' is not a whole number"),
    Case("imagej_slices_more_than_pages", imagej_tiff({"images": 99, "slices": 99}), _DECLARES),
    Case("imagej_slices_disagree_with_images", imagej_tiff({"slices": 99}), _DECLARES),
    Case("imagej_fewer_slices_than_pages", imagej_tiff({"images": 3, "slices": 3}), _DECLARES),
    Case("imagej_frames_lie", imagej_tiff({"images": 18, "slices": 6, "frames": 3}), _DECLARES),
    Case("imagej_slices_negative", imagej_tiff({"slices": -6}), "not a positive count"),
    # ---- TIFF: structure
    Case("tiff_cut_short_at_60_percent", truncated_tiff(0.6), r"incomplete|breaks off|failed to read"),
    Case("tiff_cut_short_in_the_header", truncated_tiff(0.002), r"not a readable TIFF|incomplete|breaks off"),
    Case("tiff_pages_declare_60000_columns", tiff_tag_lie(ImageWidth=60000), r"failed to read \d+ bytes"),
    Case("tiff_pages_declare_60000_squared", tiff_tag_lie(ImageWidth=60000, ImageLength=60000),
         r"declared volume .* GiB as float32, above the 2 GiB limit"),
    Case("tiff_2d_image", written_tiff(data=_RI()[0], metadata=None), r"2-D|expected a 3-D"),
    Case("tiff_rgb_samples", written_tiff(data=np.zeros((6, 12, 12, 3), np.uint8), photometric="rgb",
                                          metadata=None), r"axes|colour|3-D"),
    Case("tiff_nan_voxels", written_tiff(data=np.full(SHAPE, np.nan, np.float32), metadata=None), "NaN", override=VS),
    Case("tiff_uint8_without_scaling", written_tiff(data=np.arange(864, dtype=np.uint8).reshape(SHAPE),
                                                    metadata=None), r"refractive|RI", override=VS),
    Case("tiff_float_ri_x10000", written_tiff(data=_RI() * 10000, metadata=None), r"ri-scale 0\.0001", override=VS),
    Case("tiff_holding_a_text_file", content("frame.tif", SECRET * 8), "not a TIFF file"),
    Case("tiff_empty", content("frame.tif", b""), "empty file"),
    Case("tiff_signature_then_garbage", content("frame.tif", b"II*\x00" + SECRET * 8), r"not a readable TIFF|failed to read TIFF data"),
    Case("tiff_symlink_to_a_file_outside", symlink_outside, "not a TIFF file"),
    # ---- NumPy + sidecar: good files
    Case("npy_with_sidecar", sidecar(time_s=12.5, medium_ri=1.337), expect=lambda: [_RI()], times=[12.5]),
    Case("npy_fortran_order", npy(data=np.asfortranarray(_RI()), sidecar={"voxel_size_um": list(VS)}),
         expect=lambda: [_RI()]),
    Case("npy_time_series_memory_mapped", npy(data=np.stack([_RI(), _RI(seed=1)]), sidecar={"voxel_size_um": 0.25}),
         expect=lambda: [_RI(), _RI(seed=1)], voxel=(0.25, 0.25, 0.25)),
    # ---- sidecar metadata that lies
    Case("sidecar_voxel_size_in_nm", sidecar(voxel_size_um=[400, 200, 200]), _NM),
    Case("sidecar_voxel_size_in_mm", sidecar(voxel_size_um=[0.0004, 0.0002, 0.0002]), _MM),
    Case("sidecar_voxel_size_8_4_4_um", sidecar(voxel_size_um=[8, 4, 4]), _RANGE),
    Case("sidecar_voxel_size_a_string", sidecar(voxel_size_um="0.5 0.25 0.25"), "not three numbers"),
    Case("sidecar_voxel_size_two_values", sidecar(voxel_size_um=[0.5, 0.25]), "not three numbers"),
    Case("sidecar_voxel_size_booleans", sidecar(voxel_size_um=[True, True, True]), "not three numbers"),
    Case("sidecar_voxel_size_nested", sidecar(voxel_size_um=[[0.5], [0.25], [0.25]]), "not three numbers"),
    Case("sidecar_voxel_size_infinite", sidecar(voxel_size_um=[float("inf"), 0.25, 0.25]), "positive numbers"),
    Case("sidecar_time_nan", sidecar(time_s=float("nan")), r"time_s = nan is not a finite number"),
    Case("sidecar_time_infinite", sidecar(time_s=float("inf")), r"time_s = inf is not a finite"),
    Case("sidecar_time_a_word", sidecar(time_s="tomorrow"), r"time_s = 'tomorrow' is not a number of seconds"),
    Case("sidecar_time_negative", sidecar(time_s=-3.0), r"time_s = -3 s is negative"),
    Case("sidecar_time_a_list", sidecar(time_s=[1, 2]), r"not a number of seconds"),
    Case("sidecar_medium_ri_x10000", sidecar(medium_ri=13370), r"medium_ri = 13370 .* looks like RI x 10 000"),
    Case("sidecar_medium_ri_text", sidecar(medium_ri="water"), r"medium_ri = 'water' is not a refractive index"),
    Case("sidecar_a_list_not_an_object", npy(raw_sidecar=b"[0.5, 0.25, 0.25]"), "JSON object"),
    Case("sidecar_broken_json", npy(raw_sidecar=b'{"voxel_size_um": [0.5, 0.25'), "unreadable JSON sidecar"),
    Case("sidecar_binary_garbage", npy(raw_sidecar=b"\xff\xfe" + SECRET), "unreadable JSON sidecar"),
    Case("sidecar_huge_string_value", sidecar(voxel_size_um="0.25 " * 5000), r"'0\.25 0\.25 .*\.\.\. is not three numbers"),
    # ---- NumPy: structure
    Case("npy_holding_a_text_file", content("frame.npy", SECRET * 8), "NumPy signature"),
    Case("npy_object_array_never_unpickled", npy(data=np.full(SHAPE, None, dtype=object), allow_pickle=True),
         r"not numeric|not a readable NumPy"),
    Case("npy_header_declares_a_terabyte", npy_header_lie((10000, 10000, 10000)), r"GiB"),
    Case("npy_header_declares_more_than_written", npy_header_lie((60, 12, 12)),
         r"declares shape \(60, 12, 12\) of float32 \(34,560 bytes\), the file holds 3,456"),
    Case("npy_5d", npy(data=np.zeros((1, 1, 6, 12, 12), np.float32)), r"5-D"),
    Case("npy_complex", npy(data=np.zeros(SHAPE, np.complex64)), r"not numeric"),
    Case("npy_bool", npy(data=np.zeros(SHAPE, bool), sidecar={"voxel_size_um": list(VS)}), r"refractive|RI|numeric"),
    Case("npy_flat_axis", npy(data=np.zeros((6, 1, 12), np.float32)), r"size 1"),
    Case("npy_empty_axis", npy(data=np.zeros((0, 12, 12), np.float32)), r"empty"),
    Case("npz_ambiguous_arrays", npz(a=_RI(), b=_RI()), r"name the tomogram array 'ri'"),
    Case("npz_holding_a_text_file", content("frame.npz", SECRET * 8), "not a zip archive"),
    Case("npz_zip_without_arrays", content("frame.npz", b"PK\x05\x06" + bytes(18)), r"\.npz holds \[\]"),
    # ---- TCF
    Case("tcf_good", tcf(), expect=tcf_expect(), times=[0.0, 3.0]),
    Case("tcf_time_stamps_per_time_point", tcf(times=[1.5, 4.5]), expect=tcf_expect(), times=[1.5, 4.5]),
    Case("tcf_resolution_in_nm", tcf({"Data/3D": {"ResolutionZ": [400.0], "ResolutionY": [200.0],
                                                  "ResolutionX": [200.0]}}), _NM),
    Case("tcf_resolution_zero", tcf({"Data/3D": {"ResolutionX": [0.0]}}), "positive numbers"),
    Case("tcf_resolution_text", tcf({"Data/3D": {"ResolutionX": np.array([b"fine"])}}),
         r"ResolutionX = 'fine' is not a number"),
    Case("tcf_time_nan", tcf(times=[0.0, float("nan")]), r"Time = nan is not a finite"),
    Case("tcf_time_negative", tcf(times=[-2.0, 1.0]), r"Time = -2 s is negative"),
    Case("tcf_times_going_backwards", tcf(times=[9.0, 3.0]), r"out of order"),
    Case("tcf_times_equal", tcf(times=[3.0, 3.0]), r"out of order"),
    Case("tcf_time_interval_negative", tcf({"Data/3D": {"TimeInterval": [-3.0]}}), r"TimeInterval = -3 s is negative"),
    Case("tcf_time_interval_zero", tcf({"Data/3D": {"TimeInterval": [0.0]}}), r"TimeInterval = 0 s"),
    Case("tcf_medium_ri_x10000", tcf({"Info/Device": {"RI": [13370.0]}}), r"looks like RI x 10 000"),
    Case("tcf_holding_a_text_file", content("cells.TCF", SECRET * 8), r"not a readable HDF5"),
    Case("tcf_size_attribute_not_whole", tcf({"Data/3D": {"SizeX": [12.5]}}), r"not a whole number"),
    # ---- MATLAB
    Case("mat_v5_good", mat({"input": _matlab_order(_RI())}), expect=lambda: [_RI()], voxel=None, override=VS),
    Case("mat_v73_good", mat73(_matlab_order(_RI())), expect=lambda: [_RI()], voxel=None, override=VS),
    Case("mat_without_input", mat({"other": _matlab_order(_RI())}), r"no variable 'input'"),
    Case("mat_input_is_text", mat({"input": "a string"}), r"class|numeric|3-D|dimension"),
    Case("mat_holding_a_text_file", content("frame.mat", SECRET * 8), "no MATLAB header"),
    Case("mat_header_then_garbage", content("frame.mat", b"MATLAB 5.0 MAT-file".ljust(128) + SECRET), r"MATLAB"),
]
