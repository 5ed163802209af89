"""SSH to ferry VMs: Fabric connections with the VM's host key pinned, never auto-accepted.

The host key comes from the VM itself through the Compute Engine API (guest attributes
`hostkeys/ssh-ed25519`, published by the guest environment; `enable-guest-attributes=TRUE`
in the VM's metadata), the port and user from guest attributes `ssh/port` and `ssh/user` (22 and
ferry's user when absent, as on real GCE), the host from the instance's natIP. A server presenting any other key is refused.
"""

from __future__ import annotations

import base64
import socket
import time
from typing import Callable

HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "ssh-rsa")
CONNECT_TIMEOUT_S = 10.0


class SshNotReady(Exception):
    """SSH did not answer (yet), with the reason."""


def known_hosts_name(host: str, port: int) -> str:
    return host if int(port) == 22 else f"[{host}]:{port}"


def parse_host_key(key_type: str, value: str) -> str:
    """Guest attribute value (`AAAA...` or `ssh-ed25519 AAAA... comment`) -> `TYPE BASE64`."""
    parts = value.split()
    if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-", "rsa-")):
        key_type, blob = parts[0], parts[1]
    else:
        blob = parts[0]
    base64.b64decode(blob, validate=True)  # raises on garbage
    return f"{key_type} {blob}"


def _guest(compute, zone: str, name: str, namespace: str) -> dict:
    """{key: value} of the VM's guest attributes under NAMESPACE/ (getGuestAttributes?queryPath=)."""
    attrs = compute.instances.get_guest_attributes(project=compute.project, zone=zone, instance=name,
                                                   query_path=f"{namespace}/")
    items = (attrs.get("queryValue") or {}).get("items") or []
    return {item.get("key"): item.get("value") for item in items if item.get("namespace") == namespace}


def host_key_from_guest(compute, zone: str, name: str) -> str | None:
    """The VM's published host key as `TYPE BASE64`, or None while not published yet."""
    from infra import gce

    try:
        found = _guest(compute, zone, name, "hostkeys")
    except (gce.NotFound, gce.BadRequest, gce.Forbidden) as exc:
        _refused_by_policy(exc)
        return None
    for key_type in HOST_KEY_TYPES:
        if found.get(key_type):
            return parse_host_key(key_type, found[key_type])
    return None


def _refused_by_policy(exc) -> None:
    """Guest attributes turned off by the organization (constraints/compute.disableGuestAttributesAccess):
    no host key will ever come, so say so now instead of waiting minutes."""
    from infra.errors import CloudError

    text = str(getattr(exc, "message", "") or exc)
    if "disableGuestAttributesAccess" in text or ("guest attributes" in text.lower() and "disabled" in text.lower()):
        raise CloudError("the VM cannot publish its SSH host key: guest attributes are disabled "
                         "(organization policy constraints/compute.disableGuestAttributesAccess)",
                         hint="ferry pins each VM's host key from its guest attributes and will not connect "
                              "unverified; ask for the policy to be lifted for this project; the VM was deleted")


def login_from_guest(compute, zone: str, name: str) -> tuple[int, str | None]:
    """(port, user) from guest attributes `ssh/port` and `ssh/user`: (22, None) when absent, as on
    real GCE. The local backend publishes them (its VMs listen on their own ports; an OpenSSH-mode
    local VM logs in only the OS user that runs the service)."""
    from infra import gce

    try:
        found = _guest(compute, zone, name, "ssh")
    except (gce.NotFound, gce.BadRequest):
        return 22, None
    try:
        port = int(found.get("port") or 22)
    except ValueError:
        port = 22
    return port, (found.get("user") or None)


def connect(vm, *, timeout: float = CONNECT_TIMEOUT_S):
    """A fabric.Connection to VM (infra.provision.Vm) as its user, with its host key pinned.

    Lazy like every Fabric connection: it opens on first use. Bounded timeouts throughout.
    """
    import fabric
    import paramiko

    if not vm.host_key:
        raise SshNotReady(f"no host key known for {vm.name}: refusing to connect to an unverified server")
    key_type, blob = vm.host_key.split()[:2]
    # Ignore ~/.ssh/config (we know the VM exactly); remote commands never read the user's stdin.
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}})
    conn = fabric.Connection(
        host=vm.host,
        user=vm.user,
        port=int(vm.port),
        config=config,
        connect_timeout=timeout,
        connect_kwargs={
            "key_filename": str(vm.key_path),
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
        },
    )
    pkey = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    conn.client.get_host_keys().add(known_hosts_name(vm.host, vm.port), pkey.get_name(), pkey)
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def probe(vm, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open and authenticate one SSH session to VM, then close it; SshNotReady says why not."""
    import paramiko

    conn = connect(vm, timeout=timeout)
    try:
        conn.open()
        transport = conn.client.get_transport()
        if transport is None or not transport.is_authenticated():
            raise SshNotReady("not authenticated")
    except paramiko.BadHostKeyException as exc:
        raise SshNotReady(f"host key mismatch at {vm.host}:{vm.port} (expected the key the VM published; "
                          f"refusing {exc.key.get_name()})") from None
    except paramiko.AuthenticationException as exc:
        raise SshNotReady(f"key not accepted yet ({exc})") from None
    except (paramiko.SSHException, socket.error, EOFError, TimeoutError) as exc:
        raise SshNotReady(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    finally:
        conn.close()


def wait(vm, *, timeout: float, poll_s: float = 1.0, progress: Callable[[str], None] | None = None) -> None:
    """Probe until SSH answers, for at most TIMEOUT seconds (raises SshNotReady with the last reason)."""
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        try:
            probe(vm, timeout=min(CONNECT_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
            return
        except SshNotReady as exc:
            if time.monotonic() >= deadline:
                raise SshNotReady(f"SSH to {vm.host}:{vm.port} did not answer within {timeout:.0f} s: {exc}") from None
            if progress:
                progress(f"waiting for SSH on {vm.name} ({time.monotonic() - start:.0f} s): {exc}")
        time.sleep(poll_s)
