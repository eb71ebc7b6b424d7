"""A driver's connection to Ray: a running cluster checked before Ray is asked, and Ray's own messages kept off the
sweep's console.

`connectable(address)` resolves `--address` and asks the cluster, in a short-lived process of its own, whether it
answers and accepts this machine's authentication: an address nobody answers, a stopped cluster that Ray's temp folder
still names, or a token the cluster refuses is one UsageError line within seconds naming what to set, instead of
Ray's retries for a minute and its traceback. A cluster that requires token authentication (`ray start --head` turns
it on whenever the head has a token, such as the one any local `ray.init` leaves in ~/.ray/auth_token) while this shell
has not turned it on is connected with the token this machine has, and one line says so.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

from tools import UsageError

CONNECT_TIMEOUT_S = 5
SETUP = "docs/sweeps.md, 'On a cluster'"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Asks the cluster's GCS for its id: fails fast on a refused token, where ray.init retries for 20 s and more.
PROBE = """
import json, sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1], cluster_id=None).internal_kv_get(b"comet_probe", None, timeout=5)
    print(json.dumps({"ok": True}))
except Exception as err:
    print(json.dumps({"ok": False, "kind": type(err).__name__, "message": str(err).splitlines()[0] if str(err) else ""}))
"""


def _resolve(address: str) -> str:
    """host:port of `address`. 'auto' is the cluster RAY_ADDRESS names, else the one `ray start --head` recorded in
    Ray's temp folder; never merely some Ray found running here (Ray's own fallback), which on a shared machine may
    be another user's."""
    from ray._common.utils import get_ray_address_file
    from ray._private import services

    if address == "auto":
        recorded = pathlib.Path(get_ray_address_file(None))
        address = os.environ.get("RAY_ADDRESS") or (recorded.read_text().strip() if recorded.is_file() else "")
        if not address:
            raise UsageError(f"--address auto: neither RAY_ADDRESS nor Ray's temp folder ({recorded}) names a cluster; "
                             f"give the head's address as --address host:port ({SETUP})")
    try:
        return services.canonicalize_bootstrap_address(address)
    except ValueError as err:
        raise UsageError(f"--address {address}: {str(err).splitlines()[0]}; give host:port") from None


def _answers(host: str, port: int) -> str | None:
    """None when something accepts a connection at host:port; else why not."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as err:
        return err.strerror or type(err).__name__


def token_available() -> str | None:
    """Where this machine keeps a Ray authentication token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if pathlib.Path(path).is_file() else None
    default = pathlib.Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _probe(address: str, env: dict) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, address], env=env, capture_output=True, text=True,
                              timeout=60)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return {"ok": False, "kind": "no answer", "message": "the cluster's GCS did not answer within 60 s"}


def connectable(address: str) -> str:
    """host:port of the running cluster `address` names, once it answered and accepted this machine's token; else
    one UsageError line. May set RAY_AUTH_MODE=token for this process (see the module's docstring)."""
    resolved = _resolve(address)
    host, _, port = resolved.rpartition(":")
    named = f" (as {resolved}, which RAY_ADDRESS or Ray's temp folder names)" if address == "auto" else ""
    why = _answers(host, int(port))
    if why is not None:
        raise UsageError(f"--address {address}{named}: no Ray cluster answers there ({why}); start it ({SETUP}) "
                         f"or give the head's address as --address host:port")
    answer = _probe(resolved, dict(os.environ))
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    token = token_available()
    if not answer["ok"] and answer["kind"] == "AuthenticationError" and mode != "token" and token:
        answer = _probe(resolved, {**os.environ, "RAY_AUTH_MODE": "token"})
        if answer["ok"]:
            print(f"[sweep] the cluster at {resolved} requires token authentication: using the token of {token} "
                  f"(RAY_AUTH_MODE=token)", flush=True)
            _token_mode()
            return resolved
    if answer["ok"]:
        return resolved
    if answer["kind"] == "AuthenticationError":
        have = f"the token of {token} is not the cluster's" if token else "this machine has no Ray token"
        raise UsageError(f"--address {address}{named}: the cluster requires token authentication and {have}; set "
                         f"RAY_AUTH_TOKEN to the head's token (`ray get-auth-token` on the head prints it) and "
                         f"RAY_AUTH_MODE=token ({SETUP})")
    raise UsageError(f"--address {address}{named}: the Ray cluster there did not accept a connection ({answer['kind']}:"
                     f" {ANSI.sub('', answer['message'])[:200]}); check it with `ray status --address {resolved}`")


def _token_mode() -> None:
    """RAY_AUTH_MODE=token for this process and what it starts, with the setting Ray's core has read already
    refreshed (as Ray does when a local `ray.init` turns token authentication on)."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def messages_to(path: pathlib.Path | None) -> None:
    """Ray's messages to this driver (the raylet's reports of dead workers and nodes: coloured blocks with state
    dumps, printed by a thread of Ray's) go, without colours, to `path` instead of the console, where the sweep's
    own lines say what happened."""
    if path is None:
        return
    from ray._private import worker

    def to_file(data, ignore_prefix: bool) -> None:
        text = "".join(f"({data.get('pid', 'ray')}) {ANSI.sub('', line)}\n" for line in data.get("lines", []))
        try:
            with open(path, "a") as f:
                f.write(text)
        except OSError:
            pass  # losing one of Ray's messages must not stop the sweep

    worker.print_to_stdstream = to_file
