"""`ssh VM|RUN [-- CMD]` and `ssh-config`: OpenSSH onto a ferry VM with its pinned host key.

The target is a VM name or a run id (or `latest`): a run's VM is the one its manifest names,
and it must still exist and carry ferry's labels. The VM's host key comes from the VM itself
through the Compute Engine API, as for every connection ferry makes (infra/ssh.py); it is
written into ferry's own known_hosts and ssh config (infra/sshconfig.py) and the system's
`ssh` is exec'd with `-F` that config, so what runs is plain OpenSSH: a terminal, `-L`
forwards, the remote command's exit status as ferry's.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from infra.errors import UsageError, unknown

_FORWARD = re.compile(r"^(?:(?P<bind>[\w.\-]+|\[[0-9a-fA-F:]+\]):)?(?P<port>\d{1,5}):(?P<host>[\w.\-]+|\[[0-9a-fA-F:]+\]):(?P<hport>\d{1,5})$")


def check_forward(spec: str) -> str:
    """`-L [BIND:]PORT:HOST:HOSTPORT`, ports 1-65535; anything else is one line, exit 2."""
    m = _FORWARD.match(spec)
    if not m or not all(1 <= int(m.group(g)) <= 65535 for g in ("port", "hport")):
        raise UsageError(f"-L {spec!r} is not a local forward", hint="give [BIND:]PORT:HOST:HOSTPORT, e.g. -L 6006:localhost:6006")
    return spec


def resolve_vm(settings, target: str):
    """A VM name, or a run id / `latest` -> its VM (an infra.provision.Vm with a pinned host key)."""
    from infra import provision, templates
    from jobs import runs as records

    name = target
    if target == "latest" or records.valid_run_id(target):
        from jobs.common import bucket_of

        bucket = bucket_of(settings, create=False)
        run_id = records.latest(bucket) if target == "latest" else target
        if not run_id:
            raise UsageError(f"no runs in gs://{settings.bucket}/runs/")
        manifest = records.get_json(bucket, records.prefix(run_id) + "manifest.json") or {}
        name = manifest.get("vm")
        if not name:
            raise UsageError(f"run {run_id} has no VM recorded", hint="it never got one; see `python cli.py logs " + run_id + "`")
        where = f"run {run_id}'s VM {name}"
    else:
        templates.check_vm_name(target)
        where = f"VM {name}"
    vm = provision.get(settings, name)
    if vm is None:
        mine = [v.name for v in provision.list_vms(settings, mine_only=True)]
        if name == target:
            raise unknown("VM", name, mine)
        raise UsageError(f"{where} is gone", hint=("your VMs: " + ", ".join(mine)) if mine else "no VMs of yours are up")
    if vm.status != "RUNNING" or not vm.host or not vm.host_key:
        raise UsageError(f"{where} is {vm.status or 'not ready'}" + ("" if vm.host_key else ", without a published host key"),
                         hint="ssh needs a RUNNING VM whose host key ferry can pin; see `python cli.py status`")
    return vm


def ssh(settings, target: str, forwards=(), command=(), print_only: bool = False) -> int:
    """exec OpenSSH onto TARGET's VM (never returns unless print_only): a shell, or COMMAND."""
    from infra import sshconfig

    forwards = [check_forward(f) for f in forwards]
    vm = resolve_vm(settings, target)
    alias = sshconfig.add(settings.home, vm)
    argv = ["ssh", "-F", str(sshconfig.config_path(settings.home))]
    for f in forwards:
        argv += ["-L", f]
    argv.append(alias)
    if command:
        argv += ["--", *command]
    if print_only:
        import shlex

        print(shlex.join(argv))
        return 0
    binary = shutil.which("ssh")
    if binary is None:
        raise UsageError("OpenSSH's `ssh` is not installed here", hint="install it (Debian: apt-get install openssh-client), "
                         f"or connect by hand with the key {vm.key_path}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, argv)
    return 0  # not reached


def ssh_config(settings, install: bool = False, yes: bool = False) -> dict:
    """Refresh the entries of every RUNNING VM of yours (dropping those of VMs gone) and say how
    to use them; --install adds the Include line to ~/.ssh/config."""
    from infra import provision, sshconfig

    vms = provision.list_vms(settings, mine_only=True)
    sshconfig.prune(settings.home, settings.project, [v.name for v in vms])
    written, skipped = [], []
    for v in vms:
        if v.status != "RUNNING":
            skipped.append((v.name, v.status.lower()))
            continue
        full = provision.get(settings, v.name)
        a = sshconfig.add(settings.home, full) if full is not None else None
        (written.append((v.name, a)) if a else skipped.append((v.name, "no host key published yet")))
    user_config = Path(os.path.expanduser("~/.ssh/config"))
    installed = None
    if install:
        from infra.commands import confirm

        line = sshconfig.include_line(settings.home)
        try:
            present = any(x.strip() == line for x in user_config.read_text().splitlines())
        except OSError:
            present = False
        if not present:
            confirm(f"add `{line}` at the top of {user_config}?", yes)
        installed = sshconfig.install(user_config, settings.home)
    return {"config": str(sshconfig.config_path(settings.home)), "known_hosts": str(sshconfig.known_hosts_path(settings.home)),
            "include": sshconfig.include_line(settings.home), "entries": [{"vm": n, "alias": a} for n, a in written],
            "skipped": [{"vm": n, "why": w} for n, w in skipped], "installed": installed,
            "user_config": str(user_config)}
