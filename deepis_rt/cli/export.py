"""``deepis-rt export``: checkpoint -> FP32/FP16 ONNX with a parity report (+ TensorRT engine)."""

from __future__ import annotations

from pathlib import Path

import click

from deepis_rt.errors import MissingDependencyError


def _parse_batch(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in value.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise click.BadParameter(f"{value!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:1:4")
    return parts  # type: ignore[return-value]


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("export"),
              show_default=True, help="Parent folder; files go to OUT/NAME/.")
@click.option("--name", default=None, help="Export name [default: the checkpoint's file name without suffix].")
@click.option("--opset", type=click.IntRange(17, 23), default=18, show_default=True, help="ONNX opset.")
@click.option("--batch", default="1:1:4", show_default=True, callback=_parse_batch,
              help="Batch sizes MIN:OPT:MAX of the TensorRT optimisation profile.")
@click.option("--fp16/--no-fp16", default=True, show_default=True,
              help="Also write the FP16 graph (and build the engine in FP16).")
@click.option("--trt/--no-trt", default=None,
              help="Require / skip the TensorRT engine [default: build it when TensorRT and a GPU exist].")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("engines"), show_default=True, help="Engine and timing-cache folder.")
@click.option("--dynamic-shape", is_flag=True, help="Make Z, Y, X dynamic too (multiples of 16).")
@click.option("--no-simplify", is_flag=True, help="Do not simplify the graph with onnxslim.")
@click.option("--triton", "triton_repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="REPO", help="Also write a Triton Inference Server model repository entry REPO/NAME/.")
@click.option("--triton-kind", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="Triton instance group [auto: GPU when this machine has one].")
@click.option("--triton-backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "python"]), default="auto",
              show_default=True,
              help="How Triton runs the model: its ONNX Runtime or TensorRT backend (NVIDIA's container; auto: "
                   "TensorRT when an engine was built), or its Python backend running the ONNX file with "
                   "onnxruntime (any tritonserver, e.g. `pip install nvidia-pytriton` on a CPU machine).")
def export(checkpoint: Path, out_dir: Path, name: str | None, opset: int, batch: tuple[int, int, int],
           fp16: bool, trt: bool | None, engines_dir: Path, dynamic_shape: bool, no_simplify: bool,
           triton_repo: Path | None = None, triton_kind: str = "auto", triton_backend: str = "auto") -> None:
    """Export CHECKPOINT to ONNX (FP32 and FP16) with a parity report against PyTorch.

    A TensorRT FP16 engine is built too where TensorRT and an NVIDIA GPU exist. Without them the ONNX
    files are still written; the command fails only when --trt was given explicitly.
    """
    from deepis_rt.export.parity import format_parity_table
    from deepis_rt.export.pipeline import default_export_name, export_model, load_manifest

    try:
        result = export_model(checkpoint, out_dir=out_dir, name=name, opset=opset, batch=batch, fp16=fp16,
                              trt=trt, engines_dir=engines_dir, dynamic_shape=dynamic_shape,
                              simplify=not no_simplify)
    except MissingDependencyError:
        folder = out_dir / (name or default_export_name(checkpoint))
        manifest = load_manifest(folder, verify=False)
        click.echo(format_parity_table((manifest.parity or {}).get("results", [])))
        click.echo(f"ONNX files written to {folder}")
        raise
    parity = result.manifest.parity or {}
    click.echo(format_parity_table(result.parity))
    click.echo(f"parity: within tolerance (reference {parity['reference']}, "
               f"mask threshold +/-{parity['half_pitch_um']:g} um)")
    for entry in result.manifest.files:
        click.echo(f"wrote {result.out_dir / entry.path} ({entry.precision}, {(entry.bytes or 0) / 1e6:.2f} MB"
                   f"{', simplified' if entry.simplified else ''})")
    click.echo(f"wrote {result.manifest_path}")
    if result.engine is not None:
        verb = "using cached" if result.engine.cached else "built"
        click.echo(f"TensorRT: {verb} engine {result.engine.path}")
    else:
        click.echo(f"TensorRT: {result.trt_status}")
    if triton_repo is not None:  # deepis_rt/cluster/triton_repo.py
        from deepis_rt.cluster.triton_repo import write_triton_repository

        repo = write_triton_repository(result, triton_repo, instance_kind=triton_kind, platform=triton_backend)
        how = (f"deepis-rt serve-triton {repo.repo}   (the tritonserver of `pip install --no-deps nvidia-pytriton`)"
               if repo.platform == "python" else f"tritonserver --model-repository {repo.repo}")
        click.echo(f"Triton: wrote {repo.model_dir} ({repo.platform}, {repo.instance_kind}); serve it with: {how}")
