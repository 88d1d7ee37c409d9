"""Connecting a driver to a Ray cluster the way Ray's own tools do, with one clear error per failure.

Before ``ray.init`` the cluster's GCS (the address ``ray start --head`` prints) is asked, over the
same gRPC port, for the cluster's metadata, first without a token. The answer tells apart:

* nothing listening at the address (connection refused), or no route to it;
* something listening that is not a Ray GCS (a wrong port: the dashboard, a raylet, ...);
* a cluster that requires Ray's token authentication (``UNAUTHENTICATED``): the token is then
  looked up where Ray looks for it (``RAY_AUTH_TOKEN``, then the file named by
  ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``), offered to the cluster, and, once
  accepted, token authentication is switched on for this process before ``ray.init``;
* a cluster of another Ray or Python version (Ray refuses mixed versions).

Ray itself only picks up a token on its own for ``address="auto"``; with an explicit address
it would retry for 20 s and report "Failed to connect", which says nothing of the token.

``"auto"`` finds the cluster as Ray does: ``RAY_ADDRESS``, else the address the last
``ray start --head`` on this machine recorded in ``$RAY_TMPDIR/ray/ray_current_cluster``
(``/tmp/ray/...`` by default), else a running GCS process of this machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepis_rt.errors import ClusterAuthError, ClusterError

__all__ = ["AuthToken", "ClusterInfo", "RayConnection", "connect_ray", "find_token", "probe_cluster",
           "resolve_address"]

log = logging.getLogger(__name__)

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
#: the command of Ray's CLI that prints (``--generate``: creates) the token of ``~/.ray/auth_token``
TOKEN_COMMAND = "ray get-auth-token"
PROBE_TIMEOUT_S = 5.0
_WHERE = "batch"


@dataclass(frozen=True)
class AuthToken:
    """A Ray authentication token and where it was found (for messages; never the token itself)."""

    value: str = field(repr=False)
    source: str


def default_token_path(environ: dict[str, str] | None = None) -> Path:
    """``~/.ray/auth_token`` (Ray's default token file), for ``$HOME`` of ``environ``."""
    env = os.environ if environ is None else environ
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".ray" / "auth_token"


def find_token(environ: dict[str, str] | None = None) -> AuthToken | None:
    """The token Ray would use, in Ray's order: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.

    Raises
    ------
    ClusterAuthError
        ``RAY_AUTH_TOKEN_PATH`` names a file that cannot be read or is empty (Ray treats that as
        fatal rather than falling back to the default file).
    """
    env = os.environ if environ is None else environ
    value = env.get(TOKEN_ENV, "").strip()
    if value:
        return AuthToken(value, f"${TOKEN_ENV}")
    path = env.get(TOKEN_PATH_ENV)
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise ClusterAuthError(
                f"{_WHERE} | {TOKEN_PATH_ENV}={path}: cannot read the Ray token file ({exc.strerror or exc}); "
                f"point it at the cluster's token file, or unset it to use {default_token_path(env)}"
            ) from None
        if not value:
            raise ClusterAuthError(f"{_WHERE} | {TOKEN_PATH_ENV}={path}: the Ray token file is empty; copy the "
                                   f"cluster's token into it (`{TOKEN_COMMAND}` on the head node prints it)")
        return AuthToken(value, f"{TOKEN_PATH_ENV}={path}")
    default = default_token_path(env)
    try:
        value = default.read_text().strip()
    except OSError:
        return None
    return AuthToken(value, str(default)) if value else None


@dataclass
class ClusterInfo:
    """What the probe learnt: the address Ray will use, authentication, the cluster's versions."""

    address: str
    found_as: str
    auth_required: bool = False
    token: AuthToken | None = None
    ray_version: str | None = None
    python_version: str | None = None


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"{_WHERE} | Ray address {address!r}: expected HOST:PORT (the address `ray start --head` "
                           "prints, port 6379 by default), 'auto', 'local' or ray://HOST:10001")
    return host.strip("[]"), int(port)


def resolve_address(address: str) -> tuple[str, str]:
    """(``host:port`` as ``ray.init`` will use it, how it was found) for ``"auto"`` or ``HOST:PORT``."""
    try:
        from ray._private import services
    except ImportError:  # pragma: no cover - other Ray layouts: use the address as given
        services = None
    if address == "auto":
        env_address = os.environ.get("RAY_ADDRESS", "").strip()
        if services is None:
            if not env_address:
                raise ClusterError(f"{_WHERE} | --ray auto: set RAY_ADDRESS=HOST:PORT (this Ray cannot look it up)")
            return env_address, "$RAY_ADDRESS"
        try:
            resolved = services.canonicalize_bootstrap_address("auto")
        except ConnectionError:
            from ray._common.utils import get_ray_address_file

            raise ClusterError(
                f"{_WHERE} | --ray auto: no Ray cluster on this machine ({get_ray_address_file(None)} holds no "
                "address and no Ray GCS process runs here); start one with `ray start --head`, give a "
                "remote one's address with --ray HOST:6379, or run without a cluster with --ray local"
            ) from None
        if env_address:
            return resolved, f"$RAY_ADDRESS={env_address}"
        from ray._common.utils import get_ray_address_file

        recorded = get_ray_address_file(None)
        return resolved, (f"recorded by `ray start --head` in {recorded}" if Path(recorded).is_file()
                          else "a Ray GCS process running on this machine")
    _split(address)
    if services is not None:
        try:
            resolved = services.canonicalize_bootstrap_address(address)
        except (ValueError, ConnectionError) as exc:
            raise ClusterError(f"{_WHERE} | Ray address {address!r}: {exc}") from None
        if resolved and resolved != address:
            return resolved, f"--ray {address} (Ray uses this machine's address for localhost)"
    return address, f"--ray {address}"


def _grpc_cluster_metadata(address: str, token: AuthToken | None, timeout_s: float) -> tuple[str, bytes]:
    """(gRPC status name, cluster metadata) from the GCS at ``address``; ``("OK", b"")`` if not stored yet."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token.value}"),) if token is not None else ()
    # no HTTP proxy: a lab's proxy settings must not reroute the cluster's own port (Ray does the same)
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    try:
        stub = gcs_service_pb2_grpc.InternalKVGcsServiceStub(channel)
        request = gcs_service_pb2.InternalKVGetRequest(key=b"CLUSTER_METADATA", namespace=b"cluster")
        reply = stub.InternalKVGet(request, timeout=timeout_s, metadata=metadata)
        return "OK", bytes(reply.value)
    except grpc.RpcError as exc:
        return exc.code().name, (exc.details() or "").encode()
    finally:
        channel.close()


def probe_cluster(address: str, found_as: str = "", timeout_s: float = PROBE_TIMEOUT_S,
                  environ: dict[str, str] | None = None) -> ClusterInfo:
    """Ask the Ray GCS at ``address`` (``host:port``) who it is; raise a precise error if it cannot be used.

    Raises
    ------
    ClusterError
        Nothing listens there, something that is not a Ray GCS does, or its Ray/Python versions
        differ from this machine's.
    ClusterAuthError
        The cluster requires a token and none is available here, or the one found is refused.
    """
    env = os.environ if environ is None else environ
    found_as = found_as or f"--ray {address}"
    host, port = _split(address)
    where = f"{_WHERE} | Ray cluster at {address} ({found_as})"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        hint = ("that cluster has stopped: start it again with `ray start --head`"
                if "recorded" in found_as else
                "check the address (`ray start --head` prints it; the default port is 6379) and that the head "
                "node runs (`ray status` there)")
        raise ClusterError(f"{where}: nothing is listening on port {port}; {hint}") from None
    except TimeoutError:
        raise ClusterError(f"{where}: no answer from {host} within {timeout_s:g} s (host down, or a firewall "
                           f"drops port {port}); check the address and the network") from None
    except OSError as exc:
        raise ClusterError(f"{where}: cannot reach {host}:{port} ({exc.strerror or exc}); check the host name "
                           "and the network") from None

    info = ClusterInfo(address=address, found_as=found_as)
    status, payload = _grpc_cluster_metadata(address, None, timeout_s)
    if status == "UNAUTHENTICATED":
        info.auth_required = True
        mode = env.get(MODE_ENV, "").strip().lower()
        if mode == "disabled":
            raise ClusterAuthError(
                f"{where}: the cluster requires Ray token authentication, but {MODE_ENV}=disabled here; unset "
                f"{MODE_ENV} (or set it to 'token') so that the cluster's token is sent")
        info.token = find_token(env)
        if info.token is None:
            raise ClusterAuthError(
                f"{where}: the cluster requires Ray token authentication and no token was found here "
                f"(${TOKEN_ENV}, ${TOKEN_PATH_ENV}, {default_token_path(env)}); copy the cluster's token into "
                f"{default_token_path(env)} (`{TOKEN_COMMAND}` on the head node prints it), or set "
                f"{TOKEN_ENV} / {TOKEN_PATH_ENV}")
        status, payload = _grpc_cluster_metadata(address, info.token, timeout_s)
        if status == "UNAUTHENTICATED":
            raise ClusterAuthError(
                f"{where}: the cluster refused the token from {info.token.source}: it was started with "
                f"another token; put the cluster's token there (`{TOKEN_COMMAND}` on the head node prints it)")
    if status == "DEADLINE_EXCEEDED":
        raise ClusterError(f"{where}: port {port} accepts connections but gave no Ray answer within "
                           f"{timeout_s:g} s; is this the GCS port `ray start --head` printed (default 6379)?")
    if status != "OK":
        raise ClusterError(
            f"{where}: port {port} is open but is not a Ray cluster's GCS ({status}: "
            f"{payload.decode(errors='replace')[:160]}); use the address `ray start --head` printed "
            "(default port 6379), not the dashboard's (8265) or the Ray Client's (10001)")
    try:
        meta = json.loads(payload.decode() or "{}")
    except ValueError:
        meta = {}
    info.ray_version, info.python_version = meta.get("ray_version"), meta.get("python_version")
    _check_versions(info, where)
    return info


def _check_versions(info: ClusterInfo, where: str) -> None:
    """Ray's own rule: the same Ray, and the same Python (to the patch level unless told otherwise)."""
    import ray

    if info.ray_version is None or info.python_version is None:
        return
    level = os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL", "patch")
    mine = platform.python_version()
    n = 2 if level == "minor" else 3
    if info.ray_version == ray.__version__ and info.python_version.split(".")[:n] == mine.split(".")[:n]:
        return
    raise ClusterError(
        f"{where}: version mismatch: the cluster runs Ray {info.ray_version} on Python {info.python_version}, this "
        f"machine has Ray {ray.__version__} on Python {mine}; Ray needs the same versions on every node and "
        f"driver: run `pip install 'ray=={info.ray_version}'` in a Python {info.python_version} environment "
        "here, or run the batch on a node of the cluster")


def _refresh_auth_config() -> None:
    """Make this process see a changed ``RAY_AUTH_MODE`` (Ray reads its config once, at import)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # pragma: no cover - Ray without token authentication reads the environment
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass
class RayConnection:
    """The Ray module connected to a cluster; :meth:`close` undoes what :func:`connect_ray` did."""

    ray: Any
    owns: bool
    description: str
    _saved_mode: str | None = None
    _changed_mode: bool = False

    def close(self) -> None:
        if not self.owns:
            return
        self.ray.shutdown()
        if self._changed_mode:
            _restore(self._saved_mode)


def connect_ray(address: str, num_cpus: int | None = None) -> RayConnection:
    """Connect to (or, for ``"local"``, start) Ray; when this process already runs Ray, use that.

    ``address``: ``"local"`` (start Ray in this process), ``"auto"`` (the cluster of this machine),
    ``HOST:PORT`` (a cluster's GCS) or ``ray://HOST:PORT`` (Ray Client). See the module docstring.

    Raises
    ------
    ClusterError, ClusterAuthError
        The cluster cannot be used; the message says why and what to do.
    """
    from deepis_rt._optional import import_optional

    ray = import_optional("ray", "running archives on a Ray cluster")
    if ray.is_initialized():
        return RayConnection(ray, owns=False, description="the Ray runtime of this process")
    saved_mode = os.environ.get(MODE_ENV)
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        # Ray switches token authentication on in this process for a local runtime: undone by close()
        return RayConnection(ray, owns=True, description="a local Ray runtime", _saved_mode=saved_mode,
                             _changed_mode=os.environ.get(MODE_ENV) != saved_mode)
    if address == "auto" and os.environ.get("RAY_ADDRESS", "").strip().startswith("ray://"):
        address = os.environ["RAY_ADDRESS"].strip()
    if address.startswith("ray://"):
        try:
            ray.init(address=address, **quiet)
        except Exception as exc:
            raise ClusterError(f"{_WHERE} | Ray Client at {address}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}; check the address (the head "
                               "node's port 10001) and that `ray start --head` runs there") from None
        return RayConnection(ray, owns=True, description=f"Ray Client at {address}")

    resolved, found_as = resolve_address(address)
    info = probe_cluster(resolved, found_as)
    changed = False
    if info.auth_required and (saved_mode or "").lower() != "token":
        os.environ[MODE_ENV] = "token"
        changed = True
    if changed or info.token is not None:
        _refresh_auth_config()
    conn = RayConnection(ray, owns=True, description=f"the Ray cluster at {resolved}", _saved_mode=saved_mode,
                         _changed_mode=changed)
    try:
        ray.init(address=resolved, **quiet)
    except Exception as exc:
        if ray.is_initialized():
            ray.shutdown()
        if changed:
            _restore(saved_mode)
        first = str(exc).splitlines()[0] if str(exc) else ""
        cls = ClusterAuthError if type(exc).__name__ == "AuthenticationError" else ClusterError
        raise cls(f"{_WHERE} | Ray cluster at {resolved} ({found_as}): answered, but ray.init failed: "
                  f"{type(exc).__name__}: {first}") from None
    log.info("%s | connected to the Ray cluster at %s (%s%s)", _WHERE, resolved, found_as,
             f"; token from {info.token.source}" if info.token else "")
    return conn


def _restore(saved_mode: str | None) -> None:
    if saved_mode is None:
        os.environ.pop(MODE_ENV, None)
    else:
        os.environ[MODE_ENV] = saved_mode
    _refresh_auth_config()
