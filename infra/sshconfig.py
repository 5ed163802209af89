"""OpenSSH client config for ferry's VMs: `ssh ferry-NAME`, scp, rsync and editors' remote modes
with the same pinned host key ferry itself uses.

ferry keeps two files of its own under $FERRY_HOME/ssh/ and never edits the user's:
- `config`: one `Host` block per VM ferry brought up (HostName, Port, User, IdentityFile,
  IdentitiesOnly, HostKeyAlias, UserKnownHostsFile, StrictHostKeyChecking yes);
- `known_hosts`: the VM's host key as published by the VM through the Compute Engine API
  (guest attributes), under its alias, so a VM that comes back on another address or port is
  still checked against its own key, and a server presenting any other key is refused.
A VM's block and key go when ferry deletes the VM or finds it gone. To use the entries from
any ssh, add `Include <FERRY_HOME>/ssh/config` to the top of ~/.ssh/config (`ssh-config
--install` does it, asking first) or pass `-F <FERRY_HOME>/ssh/config`.
The alias is the VM name when it already starts with `ferry-` (ferry's own names do), else
`ferry-` + the name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_BLOCK = re.compile(r"^# ferry vm: (?P<name>\S+)(?: project: (?P<project>\S+))?\n.*?(?=^# ferry vm: |\Z)", re.S | re.M)
HEADER = ("# ferry's SSH entries, one per VM ferry brought up (written by ferry; edits are overwritten).\n"
          "# Use them with: Include {path}   (at the top of ~/.ssh/config), or ssh -F {path} ALIAS\n\n")


def alias(name: str) -> str:
    return name if name.startswith("ferry-") else f"ferry-{name}"


def config_path(home) -> Path:
    return Path(home) / "ssh" / "config"


def known_hosts_path(home) -> Path:
    return Path(home) / "ssh" / "known_hosts"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _blocks(home) -> dict[str, str]:
    try:
        text = config_path(home).read_text()
    except OSError:
        return {}
    return {m.group("name"): m.group(0).rstrip("\n") + "\n" for m in _BLOCK.finditer(text)}


def _projects(home) -> dict[str, str | None]:
    try:
        text = config_path(home).read_text()
    except OSError:
        return {}
    return {m.group("name"): m.group("project") for m in _BLOCK.finditer(text)}


def _known(home) -> dict[str, str]:
    try:
        lines = known_hosts_path(home).read_text().splitlines()
    except OSError:
        return {}
    return {line.split()[0]: line for line in lines if line.strip() and not line.startswith("#")}


def _save(home, blocks: dict[str, str], known: dict[str, str]) -> None:
    path = config_path(home)
    _write(path, HEADER.format(path=path) + "\n".join(blocks[k] for k in sorted(blocks)))
    _write(known_hosts_path(home), "".join(known[k] + "\n" for k in sorted(known)))


def block(home, vm) -> str:
    """The `Host` block for VM (an infra.provision.Vm with host, port, user, key_path)."""
    a = alias(vm.name)
    return "\n".join([
        f"# ferry vm: {vm.name} project: {vm.project}",
        f"Host {a}",
        f"    HostName {vm.host}",
        f"    Port {int(vm.port)}",
        f"    User {vm.user}",
        f"    IdentityFile {vm.key_path}",
        "    IdentitiesOnly yes",
        f"    HostKeyAlias {a}",
        f"    UserKnownHostsFile {known_hosts_path(home)}",
        "    StrictHostKeyChecking yes",
        "    ServerAliveInterval 30",
        "",
    ])


def add(home, vm) -> str | None:
    """Write (or refresh) VM's entry; returns its alias, or None when the VM cannot take one yet
    (no address or no published host key: ferry never writes an entry that trusts on first use)."""
    if not (vm.host and vm.host_key):
        return None
    blocks, known = _blocks(home), _known(home)
    a = alias(vm.name)
    blocks[vm.name] = block(home, vm)
    known[a] = f"{a} {vm.host_key}"
    _save(home, blocks, known)
    return a


def remove(home, names) -> list[str]:
    """Drop the entries of NAMES (VMs that are gone); returns the names that had one."""
    blocks, known = _blocks(home), _known(home)
    gone = [n for n in names if n in blocks]
    if not gone and not any(alias(n) in known for n in names):
        return []
    for n in names:
        blocks.pop(n, None)
        known.pop(alias(n), None)
    _save(home, blocks, known)
    return gone


def prune(home, project: str, live_names) -> list[str]:
    """Drop the entries of PROJECT's VMs not in LIVE_NAMES (a listing of that project's VMs:
    the local cloud's and a real project's entries share FERRY_HOME and are pruned apart)."""
    live = set(live_names)
    return remove(home, [n for n, p in _projects(home).items() if p == project and n not in live])


def entries(home) -> list[str]:
    """The VM names that have an entry."""
    return sorted(_blocks(home))


def include_line(home) -> str:
    return f"Include {config_path(home)}"


def install(user_config: Path, home) -> bool:
    """Add the Include line at the top of USER_CONFIG (~/.ssh/config); False if already there.
    (OpenSSH reads Include inside a Host block as part of that block: the top is the safe place.)"""
    line = include_line(home)
    try:
        text = user_config.read_text()
    except FileNotFoundError:
        text = ""
    if any(existing.strip() == line for existing in text.splitlines()):
        return False
    user_config.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(user_config.parent, 0o700)
    _write(user_config, f"# ferry's VMs (python cli.py ssh-config)\n{line}\n\n{text}")
    return True
