"""Start or join the Ray instance a sweep runs on, with the dashboard behind token auth.

Embedded default: a local Ray instance whose dashboard listens on 127.0.0.1, with Ray's token
authentication on (``RAY_AUTH_MODE=token``; the token lives in ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` and is created on first use).  ``ray.address=HOST:PORT`` (or ``auto``)
joins an existing cluster instead, e.g. the one ``slurm/sweep.sh`` brings up.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from omegaconf import DictConfig

__all__ = ["connect", "token_path", "ensure_token_file", "set_auth_mode", "free_port"]


def token_path() -> Path:
    """Where this process's Ray token is read from."""
    env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(env) if env else Path.home() / ".ray" / "auth_token"


def ensure_token_file(*, create: bool) -> None:
    """Make sure the token Ray will read exists and only its owner can read it (mode 600).

    The token guards a dashboard that can submit jobs.  Ray itself would create
    ``~/.ray/auth_token`` with the default umask (world-readable), so a missing default token
    is created here first, in a folder of mode 700; an existing one readable by others is
    narrowed to 600.  ``$RAY_AUTH_TOKEN`` (the token itself) needs no file.

    Raises
    ------
    FileNotFoundError
        ``$RAY_AUTH_TOKEN_PATH`` names a file that does not exist, or (``create=False``, when
        joining a cluster) the default token file is missing.
    """
    import stat

    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = token_path()
    if os.environ.get("RAY_AUTH_TOKEN_PATH") and not path.is_file():
        raise FileNotFoundError(f"RAY_AUTH_TOKEN_PATH={path} does not exist; point it to the cluster's "
                                f"token file, or unset it to use {Path.home() / '.ray' / 'auth_token'} "
                                f"(created on first use)")
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"Ray token authentication is on but there is no token at {path}; "
                                    f"copy the cluster's token there or set RAY_AUTH_TOKEN_PATH")
        from ray._private.authentication.authentication_token_generator import (
            generate_new_authentication_token)

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_new_authentication_token())
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)
        print(f"note: {path} was readable by others (mode {mode:o}); now 600", flush=True)




def set_auth_mode(mode: str) -> None:
    """Set ``RAY_AUTH_MODE`` for this process and the Ray processes it starts.

    Ray reads the variable into its cached C++ config when ``ray`` is first imported, so if it
    was imported already the cache is refreshed (as Ray itself does when it turns auth on).
    """
    if os.environ.get("RAY_AUTH_MODE") == mode:
        return
    os.environ["RAY_AUTH_MODE"] = mode
    if "ray" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


def free_port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1, else a free one (another Ray may hold 8265)."""
    for candidate in (port, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            if candidate != port:
                print(f"dashboard port {port} is taken; using {sock.getsockname()[1]}", flush=True)
            return sock.getsockname()[1]
    return port


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``HOST:PORT`` (or ``ray://HOST:PORT``).

    ``ray.init`` retries an unreachable address for minutes before giving up; a plain TCP connect
    answers in milliseconds (refused) or ``timeout`` seconds (filtered). ``auto`` and addresses
    without a port are left to Ray.

    Raises
    ------
    ConnectionError
        Naming ``ray.address`` and the reason, in one line.
    """
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at ray.address={address}: "
                              f"{exc.strerror or exc} (is the head node started, and the port right?)") from None


def connect(ray_cfg: DictConfig, *, quiet: bool = False):
    """``ray.init`` for the sweep driver; returns the ``RayContext``.

    Raises
    ------
    ValueError
        ``ray.auth`` is neither ``token`` nor ``disabled``.
    ConnectionError
        ``ray.address`` is set but no cluster answers there.
    FileNotFoundError
        ``$RAY_AUTH_TOKEN_PATH`` names a missing file (see :func:`ensure_token_file`).
    """
    auth = str(ray_cfg.auth)
    if auth not in ("token", "disabled"):
        raise ValueError(f"ray.auth={auth!r} must be 'token' or 'disabled'")
    set_auth_mode(auth)
    if auth == "token":
        ensure_token_file(create=not ray_cfg.address)
    # Trials checkpoint every epoch and Tune keeps two; that forces frequent experiment-state
    # snapshots, which are cheap here (local storage), so silence the warning about them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    # Long-lived helpers of Ray inherit this; keep runtime logs out of the user's terminal.
    kwargs = dict(ignore_reinit_error=True, log_to_driver=bool(ray_cfg.log_to_driver))
    if ray_cfg.address:
        check_reachable(str(ray_cfg.address))
        try:
            ctx = ray.init(address=str(ray_cfg.address), **kwargs)
        except ConnectionError as exc:
            raise ConnectionError(f"no Ray cluster answers at ray.address={ray_cfg.address}: {exc}") from exc
    else:
        init = dict(include_dashboard=bool(ray_cfg.dashboard), dashboard_host="127.0.0.1",
                    dashboard_port=free_port(int(ray_cfg.dashboard_port)))
        if ray_cfg.num_cpus:
            init["num_cpus"] = int(ray_cfg.num_cpus)
        if ray_cfg.num_gpus is not None:
            init["num_gpus"] = int(ray_cfg.num_gpus)
        if ray_cfg.temp_dir:
            init["_temp_dir"] = str(ray_cfg.temp_dir)
        # "local": always a new instance; plain ray.init() would instead join whatever cluster
        # /tmp/ray/ray_current_cluster names (e.g. one left by `ray start` on this machine).
        ctx = ray.init(address="local", **init, **kwargs)
    if not quiet:
        url = ctx.dashboard_url
        if url:
            url = url if url.startswith("http") else f"http://{url}"
            print(f"Ray dashboard: {url}", flush=True)
            if os.environ.get("RAY_AUTH_MODE") == "token":
                print(f"  token authentication is on; the token is in {token_path()} "
                      f"(print it with `ray get-auth-token`) and the dashboard asks for it once.",
                      flush=True)
    return ctx
