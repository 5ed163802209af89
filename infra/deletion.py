"""Deleting VMs: the one function every command uses, and the rule for what ferry may delete.

ferry deletes an instance only when it can prove it owns it, checked on the instance fetched
from the API right before the delete:
- the instance id recorded when this process inserted it (`Proof(instance_id=...)`), or
- its labels: `managed-by=ferry`, `ferry-owner=<you>` (another owner only once the user said
  so: `Proof(any_owner=True)`), and `ferry-run=<run id>` when the caller deletes a run's VM
  (`Proof(run_id=...)`).
A refused delete deletes nothing and says why (`NotOurs`, exit 3). An instance that is already
gone is fine (False). Every wait has a deadline (the backend's operation timeout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from infra import gce, render, state
from infra.errors import CloudError
from infra.operations import Failure, from_exception, wait
from infra.settings import Settings, owner

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Proof:
    """What ferry knows about a VM it is about to delete."""

    instance_id: str | None = None   # recorded at insert by this process
    run_id: str | None = None        # the VM must be this run's (label ferry-run)
    any_owner: bool = False          # the user confirmed deleting another owner's VM


class NotOurs(CloudError):
    """ferry cannot prove it owns the VM: nothing was deleted."""


def refusal(inst, proof: Proof, me: str | None = None) -> str | None:
    """None when PROOF shows the fetched instance INST (the API's JSON) is ferry's to delete, else why not."""
    me = me or owner()
    if proof.instance_id:
        if str(inst.get("id")) == str(proof.instance_id):
            return None
        return f"its instance id {inst.get('id')} is not {proof.instance_id}, the VM ferry created under that name"
    labels = dict(inst.get("labels") or {})
    if labels.get(render.MANAGED_BY) != "ferry":
        return "it is not managed by ferry (no label managed-by=ferry)"
    if proof.run_id and labels.get(render.LABEL_RUN) != proof.run_id:
        return (f"it is not the VM of run {proof.run_id} "
                f"(its label ferry-run is {labels.get(render.LABEL_RUN)!r})")
    if labels.get(render.LABEL_OWNER) != me and not proof.any_owner:
        return f"it belongs to {labels.get(render.LABEL_OWNER)!r}, not to you ({me})"
    return None


def _last(url: str) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def _fetch(compute, zone: str, name: str):
    try:
        return compute.instances.get(project=compute.project, zone=zone, instance=name)
    except gce.NotFound:
        return None


def _issue(compute, zone: str, name: str, deadline: float):
    """instances.delete, retried while the instance is not ready (an insert still running) or
    the API answers 429/503, until DEADLINE -> the operation, or None when it is already gone."""
    while True:
        try:
            return compute.instances.delete(project=compute.project, zone=zone, instance=name)
        except gce.NotFound:
            return None
        except (gce.BadRequest, gce.ServiceUnavailable, gce.TooManyRequests, gce.Conflict,
                gce.InternalServerError) as exc:
            if time.monotonic() > deadline:
                raise from_exception(exc, zone) from None
            time.sleep(max(compute.pacing.poll_s, 0.2))


def _finish(compute, zone: str, name: str, op, deadline: float) -> bool:
    if op is None:
        return False
    try:
        wait(compute, op, zone, what=f"deleting {name}", timeout=max(1.0, deadline - time.monotonic()))
    except Failure as failure:
        if "notFound" in failure.code or "RESOURCE_NOT_FOUND" in failure.code:
            return False
        raise CloudError(f"deleting {name} in {zone} failed: {failure}") from None
    return True


def delete_many(settings: Settings, targets: list, progress: Progress | None = None, compute=None) -> dict:
    """[(name, zone | None[, Proof])] -> {name: True deleted / False already gone}. Without a
    Proof, the labels must show the VM is ferry's and yours.

    Checks every target first (a refusal raises NotOurs before anything is deleted), then issues
    every delete, then waits on each operation (VMs go in parallel)."""
    from infra import clients, provision

    say = progress or (lambda message: None)
    compute = compute or clients.compute(settings)
    me = owner()
    checked, results = [], {}
    for target in targets:
        name, zone, proof = (*target, Proof()) if len(target) == 2 else target
        inst = _fetch(compute, zone, name) if zone else provision.find(compute, settings, name)
        if inst is None:
            results[name] = False
            state.forget(settings, name)
            continue
        why = refusal(inst, proof, me)
        if why:
            raise NotOurs(f"not deleting VM {name} in {_last(inst['zone'])}: {why}", hint="nothing was deleted")
        checked.append((name, _last(inst["zone"])))
    deadline = time.monotonic() + compute.pacing.delete_timeout_s
    issued = []
    for name, zone in checked:
        say(f"deleting {name} in {zone}")
        issued.append((name, zone, _issue(compute, zone, name, deadline)))
    for name, zone, op in issued:
        results[name] = _finish(compute, zone, name, op, deadline)
        state.forget(settings, name)
    _forget_ssh(settings, list(results))
    return results


def _forget_ssh(settings: Settings, names: list) -> None:
    """A VM gone takes its `ssh ferry-NAME` entry and pinned key with it (infra/sshconfig.py)."""
    from infra import sshconfig

    try:
        sshconfig.remove(settings.home, names)
    except OSError:
        pass


def delete(settings: Settings, name: str, zone: str | None = None, proof: Proof = Proof(),
           progress: Progress | None = None, compute=None) -> bool:
    """Delete VM NAME if PROOF shows it is ours; True deleted, False already gone; NotOurs else."""
    return delete_many(settings, [(name, zone, proof)], progress=progress, compute=compute)[name]
