"""Finding and ending every process a local VM started.

Every process started on a VM (SSH commands, the startup script, sshd in openssh mode)
carries FERRY_LOCAL_VM=<marker> in its environment. A process's initial environment stays
readable in /proc/PID/environ whatever it does afterwards (setsid, nohup, double fork), and
children inherit it, so a /proc scan finds daemonised grandchildren too. Process groups that
the VM created are killed as well, which catches a child that exec'd with a cleared env.
"""

from __future__ import annotations

import os
import signal
import time

MARKER_VAR = "FERRY_LOCAL_VM"
# the VM's own machinery (sshd in openssh mode): killed on stop, not listed by pids()
SYSTEM_VAR = "FERRY_LOCAL_VM_SYSTEM"


def alive(pid: int | None) -> bool:
    """Whether PID is a live process (a zombie or a dead one is not)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        if os.path.isdir("/proc"):
            return False
        try:  # no /proc (macOS): existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


def _protected() -> set[int]:
    """This process and its ancestors: never ours to kill, whatever their environment says."""
    out = {0, 1}
    pid = os.getpid()
    for _ in range(64):
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
    return out


def find(marker: str, var: str = MARKER_VAR) -> list[int]:
    """Live (non-zombie) processes whose environment carries <var>=marker.

    For SYSTEM_VAR the command line counts too: sshd rewrites its process title over its
    environment, so its listener carries the marker as an argument (`-o SetEnv=...`)."""
    token = f"{var}={marker}".encode()
    needle = b"\0" + token + b"\0"
    in_cmdline = var == SYSTEM_VAR
    protected = _protected()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in protected:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle in b"\0" + env + b"\0":  # zombies have an empty environ: skipped here
            found.append(pid)
        elif in_cmdline and env:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    words = f.read().replace(b"\0", b" ").split()
            except OSError:
                continue
            if any(w == token or w.endswith(b"=" + token) for w in words):
                found.append(pid)
    return sorted(found)


def descendants(roots) -> set[int]:
    """Every live descendant of the given pids (by parent links, one /proc scan).

    Catches children whose /proc environ no longer shows the marker (a process that sets its
    title, as sshd does, overwrites that memory) as long as they have not been re-parented."""
    roots = {r for r in roots if r and r > 1}
    if not roots:
        return set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
        except (OSError, ValueError):
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out - _protected()


def freeze_tree(roots) -> set[int]:
    """SIGSTOP the given pids and all their descendants, rescanning until no new process
    appears (a stopped process cannot fork); returns them all, for a SIGKILL that misses none."""
    frozen: set[int] = set()
    for _ in range(50):
        current = (descendants(set(roots) | frozen) | {r for r in roots if r and r > 1}) - _protected()
        new = current - frozen
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                pass
        frozen |= new
    return frozen


def _signal_all(pids, pgids, sig) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_all(marker: str, pgids=(), grace: float = 0.0, deadline: float = 2.0, var: str | None = None, roots=()) -> list[int]:
    """End every process of the VM: SIGTERM and up to `grace` seconds to exit, then SIGKILL,
    rescanning until none is left (a process forking meanwhile is caught by the next scan).

    `roots`: pids whose whole subtree goes too (snapshotted now, before anything dies).
    `var`: only processes carrying that marker variable; default both FERRY_LOCAL_VM and
    FERRY_LOCAL_VM_SYSTEM (a VM's own sshd in openssh mode).
    Returns the pids still found at the deadline (empty on success)."""
    if var is None:
        system = find(marker, SYSTEM_VAR)  # sshd and its per-connection children (by parent links)
        return kill_all(marker, pgids, grace, deadline, MARKER_VAR, roots) + kill_all(marker, (), 0.0, deadline, SYSTEM_VAR, system)
    pgids = [g for g in set(pgids) if g and g > 1 and g not in _protected()]
    end = time.monotonic() + max(grace, 0.0) + deadline  # the grace does not eat the SIGKILL phase
    tree = descendants(set(roots) | set(pgids)) | {r for r in roots if r > 1}
    pids = sorted(set(find(marker, var)) | tree)
    if grace <= 0:
        tree = freeze_tree(tree)
    if grace > 0 and (pids or pgids):
        _signal_all(pids, pgids, signal.SIGTERM)
        stop_at = time.monotonic() + grace
        while pids and time.monotonic() < stop_at:
            time.sleep(0.01)
            pids = find(marker, var)
    signalled = set(pids) | tree
    _signal_all(signalled, pgids, signal.SIGKILL)
    while True:
        # SIGSTOP first would freeze a fork loop; SIGKILL on every scan converges as fast.
        pids = find(marker, var)
        if not pids:
            # a killed process stops showing its environment before it is fully dead (its memory
            # goes first): wait for those signalled to be gone too, so that [] means dead
            while any(alive(p) for p in signalled) and time.monotonic() <= end:
                time.sleep(0.002)
            return []
        if time.monotonic() > end:
            return pids
        signalled |= set(pids)
        _signal_all(pids, (), signal.SIGKILL)
        time.sleep(0.005)
