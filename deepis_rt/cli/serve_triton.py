"""``deepis-rt serve-triton``: run nvidia-pytriton's tritonserver on a model repository, no container."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from deepis_rt.errors import ConfigError


@click.command("serve-triton")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; the server has no authentication).")
@click.option("--tritonserver", "home", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder holding pytriton/ and nvidia_pytriton.libs/ [default: the installed nvidia-pytriton, "
                   "or $DEEPIS_TRITONSERVER_HOME].")
@click.option("--print-command", is_flag=True,
              help="Print the environment and tritonserver command line (to run it under systemd etc.), then exit.")
def serve_triton(repo: Path, http_port: int, grpc_port: int, address: str, home: Path | None,
                 print_command: bool) -> None:
    """Serve REPO (written by `deepis-rt export CKPT --triton REPO --triton-backend python`) with the
    tritonserver of `pip install --no-deps nvidia-pytriton`, in the foreground until Ctrl-C.

    Needs Linux (x86-64 or arm64); runs on a CPU. NVIDIA's Triton container serves the same
    repository, and the onnxruntime / tensorrt flavours too.
    """
    from deepis_rt.cluster.triton_server import TritonServer, find_tritonserver

    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    if not models:  # tritonserver would start and serve nothing
        raise ConfigError(f"serve-triton | {repo}: no model here (no <model>/config.pbtxt); write one with "
                          "`deepis-rt export CKPT --triton REPO --triton-backend python`")

    server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, address=address,
                          distribution=find_tritonserver(home),
                          backend_dir=repo.resolve().parent / "triton-backends" if print_command else None)
    if print_command:
        click.echo(server.shell())
        server.close()
        return

    def _terminate(signum, frame):  # noqa: ANN001 - stop like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start(wait_s=300)
        click.echo(f"serving {repo} at http://{server.url} (gRPC {server.grpc_url}); log: {server.log_path}; "
                   "Ctrl-C to stop", err=True)
        while server.running:
            time.sleep(0.5)
        click.echo(f"tritonserver exited:\n{server.log_tail()}", err=True)
        raise SystemExit(1)
    except KeyboardInterrupt:
        click.echo("stopping tritonserver", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
