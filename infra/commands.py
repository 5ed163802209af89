"""The CLI-facing functions for up, down, status, cleanup and gpus: call infra.provision and
print (rich tables and a live status on stderr for people; JSON on stdout with --json)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from infra import runstate
from infra.errors import CloudError, UsageError
from infra.settings import Settings
from infra.times import parse_time

CONFIRM_OVER_USD = 25.0     # `up` asks before a VM whose run-time limit could cost more


def _out():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped: do not squeeze tables into 80 columns
        console = Console(highlight=False, width=200)
    return console


def _err():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _money(value) -> str:
    return "?" if value is None else f"${value:,.2f}"


def _when(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "-"
    delta = (dt - now).total_seconds()
    here = dt.astimezone()
    local = here.strftime("%H:%M" if here.date() == now.astimezone().date() else "%Y-%m-%d %H:%M")
    return f"{local} (in {_dur(delta)})" if delta >= 0 else f"{local} ({_dur(-delta)} ago)"


def _dur(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} (no terminal to ask: pass --yes)")
    import click

    if not click.confirm(question, default=False, err=True):
        raise UsageError("cancelled; nothing changed")


class _Live:
    """A live one-line status on stderr; warnings stay on screen."""

    def __init__(self, enabled: bool = True):
        self.console = _err()
        self.enabled = enabled and self.console.is_terminal
        self.status = None

    def __enter__(self):
        if self.enabled:
            self.status = self.console.status("starting")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if message == getattr(self, "_last", None) and self.status is None:
            return  # no terminal: print each distinct line once
        self._last = message
        if message.startswith("warning: "):
            self.console.print(f"[yellow]warning:[/yellow] {message[9:]}")
        elif self.status is not None:
            self.status.update(message)
        else:
            self.console.print(message, style="dim")

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)


def _cloud_errors(fn):
    """API and auth exceptions that escape the library become one line and exit 3."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, CloudError, KeyboardInterrupt):
            raise
        except Exception as exc:
            from infra.operations import Failure, from_exception

            if isinstance(exc, Failure):
                raise CloudError(str(exc)) from None
            if not type(exc).__module__.startswith("google."):
                raise
            try:
                failure = from_exception(exc)
            except Exception:
                raise CloudError(f"{type(exc).__name__}: {exc}") from None
            raise CloudError(str(failure)) from None

    return wrapper


# --------------------------------------------------------------------------- up
@_cloud_errors
def up(settings: Settings, *, gpu=None, template=None, name=None, spot=None, max_hours=None, dry_run=False, yes=False):
    from infra import provision


    options = dict(gpu=gpu, template=template, name=name, spot=spot, max_hours=max_hours)
    if dry_run:
        with _Live() as live:
            plan = provision.up(settings, dry_run=True, progress=live, **options)
        return _print_plan(plan, settings)
    plan = provision.plan(settings, **options)  # validation + cost, before anything else
    if plan.max_cost is not None and plan.max_cost > CONFIRM_OVER_USD:
        confirm(f"{plan.name}: {plan.spec.gpu_label} at {_money(plan.price_per_hour)}/h may cost up to "
                 f"{_money(plan.max_cost)} before its {plan.max_hours:g} h limit deletes it. Create it?", yes)
    with _Live() as live:
        vm = provision.up(settings, progress=live, **options)
    if settings.json:
        return _emit_json(vm.as_dict())
    _print_vm(vm, settings)


def _print_plan(plan, settings: Settings) -> None:
    if settings.json:
        return _emit_json(plan.as_dict())
    out = _out()
    spec = plan.spec
    out.print(f"[bold]dry run[/bold]: nothing is created, no credentials used ({settings.backend} backend)")
    out.print(f"  VM           {plan.name} in {plan.zone} (project {plan.project}; failover may move on)")
    out.print(f"  template     {spec.template}: {spec.description}")
    out.print(f"  GPU          {spec.gpu_label} on {spec.machine_type}{' (spot)' if spec.spot else ''}")
    out.print(f"  image        {spec.image_project}/{spec.image_family}, {spec.boot_disk_gb} GB {spec.boot_disk_type}")
    out.print(f"  price        {_money(plan.price_per_hour)}/h (approximate, see `gpus`)")
    out.print(f"  limit        deleted by the cloud after {plan.max_hours:g} h: at most {_money(plan.max_cost)}")
    out.print("  calls:")
    for call in plan.calls:
        out.print(f"    {call}")
    out.print("  instance body (instances.insert):")
    out.print(json.dumps(plan.body, indent=2), markup=False)


def _alias(name: str) -> str:
    from infra import sshconfig

    return sshconfig.alias(name)


def _print_vm(vm, settings: Settings) -> None:
    out = _out()
    now = datetime.now(timezone.utc)
    verb = "created" if vm.created else "reused"
    out.print(f"[bold green]{vm.name}[/bold green] is up ({verb})")
    rows = [
        ("zone", vm.zone),
        ("address", f"{vm.host}:{vm.port}" if vm.port != 22 else str(vm.host)),
        ("GPU", f"{vm.gpu_count} x {vm.gpu} on {vm.machine_type}" if vm.gpu else f"none, {vm.machine_type}"),
        ("price", f"{_money(vm.price_per_hour)}/h{' (spot)' if vm.spot else ''} (approximate)"),
        ("auto-delete", _when(vm.auto_delete_at, now)),
        ("ssh", f"python cli.py ssh {vm.name}   (or `ssh {_alias(vm.name)}` with `python cli.py ssh-config --install`)"),
        ("delete", f"python cli.py down {vm.name}"),
    ]
    for key, value in rows:
        out.print(f"  {key:<12} {value}", markup=False)


# --------------------------------------------------------------------------- down
@_cloud_errors
def down(settings: Settings, *, vm=None, all_=False, dry_run=False, yes=False):
    from infra import clients, provision, render, templates
    from infra.settings import owner

    if vm and all_:
        raise UsageError("give a VM name or --all, not both")
    if vm:
        templates.check_vm_name(vm)
    if dry_run and vm:
        # No credentials needed: the exact call is known without looking.
        return _report_down(settings, [vm], {}, dry_run=True)
    if vm:
        compute = clients.compute(settings)
        inst = provision.find(compute, settings, vm)
        if inst is None:
            return _report_down(settings, [vm], {vm: False})
        labels, zone = dict(inst.get("labels") or {}), inst["zone"].rsplit("/", 1)[-1]
        if labels.get(render.MANAGED_BY) != "ferry":
            raise UsageError(f"VM {vm} in {zone} is not managed by ferry; not deleting it",
                             hint="ferry deletes only VMs with its label managed-by=ferry; nothing was deleted")
        proof = provision.Proof()
        theirs = labels.get(render.LABEL_OWNER)
        if theirs != owner():
            confirm(f"VM {vm} in {zone} belongs to {theirs!r}, not to you ({owner()}). Delete it anyway?", yes)
            proof = provision.Proof(any_owner=True)
        else:  # like `gcloud compute instances delete`: ask, unless --yes
            confirm(f"delete VM {vm} in {zone}{_describe(inst, labels)}?", yes)
        targets = [(vm, zone, proof)]
    else:
        vms = provision.list_vms(settings, mine_only=True)
        if all_:
            chosen = vms
        elif len(vms) <= 1:
            chosen = vms
        else:
            raise UsageError("you have several VMs: name one or pass --all", hint="yours: " + ", ".join(v.name for v in vms))
        if dry_run or not chosen:
            return _report_down(settings, [v.name for v in chosen], {}, dry_run=dry_run)
        confirm(f"delete {len(chosen)} VM(s): {', '.join(v.name for v in chosen)}?" if len(chosen) > 1
                else f"delete VM {chosen[0].name} in {chosen[0].zone}?", yes)
        targets = [(v.name, v.zone, provision.Proof()) for v in chosen]
    with _Live() as live:
        results = provision.delete_many(settings, targets, progress=live)
    _report_down(settings, [t[0] for t in targets], results)


def _describe(inst, labels: dict) -> str:
    """` (run RUN, 5 min old)`: what a person deciding on a delete wants to see."""
    from infra.times import parse_time

    bits = []
    if labels.get("ferry-run"):
        bits.append(f"of run {labels['ferry-run']}")
    created = parse_time(getattr(inst, "creation_timestamp", None) or (inst.get("creationTimestamp")
                                                                       if isinstance(inst, dict) else None))
    if created is not None:
        bits.append(f"up {_dur((datetime.now(timezone.utc) - created).total_seconds())}")
    return f" ({', '.join(bits)})" if bits else ""


def _report_down(settings, targets, results, dry_run=False):
    if settings.json:
        return _emit_json({"dry_run": dry_run, "vms": [
            {"name": t, "result": "would delete" if dry_run else ("deleted" if results.get(t) else "already gone")}
            for t in targets]})
    out = _out()
    if not targets:
        out.print("no VMs of yours to delete")
    for t in targets:
        if dry_run:
            out.print(f"dry run: would call DELETE compute/v1/projects/{settings.project}/zones/<its zone>/instances/{t}"
                      " and wait for the operation (only if it carries managed-by=ferry, and asking first if it is"
                      " another owner's)", markup=False)
        else:
            out.print(f"{t}: {'deleted' if results.get(t) else 'already gone'}")


# --------------------------------------------------------------------------- status
@_cloud_errors
def status(settings: Settings):
    from infra import provision

    vms = provision.list_vms(settings)
    from infra import sshconfig

    sshconfig.prune(settings.home, settings.project, [v.name for v in vms])  # entries of VMs gone go too
    now = datetime.now(timezone.utc)
    rows = []
    for v in vms:
        age = (now - v.created_at).total_seconds() if v.created_at else None
        billed = None
        if age is not None and v.price_per_hour is not None and v.status not in ("TERMINATED", "STOPPED"):
            billed = round(v.price_per_hour * max(age, 60) / 3600, 4)  # per second after the first minute
        rows.append((v, age, billed))
    if settings.json:
        return _emit_json([
            {**v.as_dict(), "age_s": None if age is None else round(age, 1), "cost_so_far": billed,
             "owner": v.labels.get("ferry-owner"), "run": v.labels.get("ferry-run")}
            for v, age, billed in rows])
    if not rows:
        _out().print(f"no ferry VMs in project {settings.project} ({settings.backend} backend)")
        return
    from infra.tables import Column, show

    columns = [Column("name"), Column("zone", drop=4), Column("status"), Column("GPU"), Column("machine", drop=6),
               Column("owner", drop=7), Column("run", drop=5), Column("age", right=True, drop=3),
               Column("$/h", right=True, drop=2), Column("cost so far", right=True), Column("auto-delete", drop=1)]
    colours = {"RUNNING": "green", "TERMINATED": "red", "STOPPING": "yellow", "PROVISIONING": "cyan", "STAGING": "cyan"}
    table = [[v.name, v.zone, (v.status, colours.get(v.status)), f"{v.gpu_count} x {v.gpu}" if v.gpu else "-",
              v.machine_type, v.labels.get("ferry-owner", "-"), v.labels.get("ferry-run", "-"),
              "-" if age is None else _dur(age), _money(v.price_per_hour), _cost(billed), _when(v.auto_delete_at, now)]
             for v, age, billed in rows]
    total = sum(b for _, _, b in rows if b)
    show(columns, table, title=f"ferry VMs in {settings.project} ({settings.backend})",
         notes=[f"total so far {_cost(total)} (approximate prices, see `gpus`; Compute Engine bills each VM "
                "per second after its first minute)"])


def _cost(value) -> str:
    """Money spent so far: cents hide what a short-lived VM costs, so small sums get a tenth of one."""
    if value is None:
        return "?"
    return f"${value:,.3f}" if value < 1 else f"${value:,.2f}"


# --------------------------------------------------------------------------- cleanup
def run_liveness(settings: Settings, runs: set, now: datetime) -> dict:
    """(bucket, run id) -> (live: True | False | None unknown, why) from that bucket's
    runs/<id>/status.json (state + heartbeat). A run VM names the bucket of its record in its
    metadata; a record that cannot be read is unknown, never a reason to delete."""
    if not runs:
        return {}
    from google.api_core import exceptions as gexc

    from infra.clients import storage_client

    client = storage_client(settings)
    out = {}
    for bucket_name, run_id in sorted(runs):
        where = f"gs://{bucket_name}/runs/{run_id}/status.json"
        try:
            data = json.loads(client.bucket(bucket_name).blob(f"runs/{run_id}/status.json").download_as_bytes())
        except gexc.NotFound:
            out[(bucket_name, run_id)] = (None, f"no record at {where}")
            continue
        except ValueError:
            out[(bucket_name, run_id)] = (None, f"{where} is unreadable")
            continue
        except gexc.GoogleAPICallError as exc:
            out[(bucket_name, run_id)] = (None, f"cannot read {where}: {exc.message}")
            continue
        recorded = str(data.get("state", "")).lower()
        state = runstate.effective_state(data, now)
        beat = parse_time(data.get("heartbeat"))
        ago = "no heartbeat" if beat is None else f"heartbeat {_dur((now - beat).total_seconds())} ago"
        if state in runstate.FINAL:
            out[(bucket_name, run_id)] = (False, f"run {state}" + (f" ({recorded}, {ago})" if state != recorded else ""))
        else:
            out[(bucket_name, run_id)] = (True, f"run {state}, {ago}")
    return out


def orphans(settings: Settings, vms: list, now: datetime | None = None) -> tuple[list, list]:
    """-> ([(vm, why)] to delete, [(vm, why)] to report only). The rule:
    - TERMINATED/STOPPED ferry VMs: orphaned (they hold a disk, nothing can use them; a run's
      VM that powered itself off at its job's end is one);
    - a VM labelled ferry-run=<id>: orphaned once its run is over or lost by the rule `runs`
      uses (infra/runstate.py: final state, or a heartbeat older than 2 minutes while running,
      30 while provisioning or syncing), judged from the record in the bucket its metadata
      names (a teammate's runs live in their bucket). A record that cannot be read (absent,
      another bucket, no access) is reported, not deleted;
    - a VM without ferry-run (a plain `up`): the user's; orphaned only once older than its
      run-time limit (the cloud should have deleted it)."""
    now = now or datetime.now(timezone.utc)

    def record_of(v):
        return (v.run_bucket or settings.bucket, v.labels["ferry-run"])

    runs = run_liveness(settings, {record_of(v) for v in vms if v.labels.get("ferry-run")}, now)
    found, reported = [], []
    for v in vms:
        run = v.labels.get("ferry-run")
        if v.labels.get("ferry-sweep"):  # Cloud Batch's VM: Batch deletes it (`sweep cancel` ends the sweep)
            reported.append((v, f"a VM of sweep {v.labels['ferry-sweep']}, run by Cloud Batch; "
                                "`python cli.py sweep cancel ID` ends it"))
            continue
        if v.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
            found.append((v, f"{v.status.lower()}, holds a disk"))
        elif run:
            live, why = runs.get(record_of(v), (None, "no record"))
            if live:
                continue
            if live is None:
                reported.append((v, f"{run}: {why}; not deleting a VM whose run ferry cannot see "
                                    f"(`python cli.py down {v.name}` deletes it)"))
                continue
            found.append((v, f"{run}: {why}"))
        elif v.auto_delete_at is not None and now > v.auto_delete_at:
            found.append((v, "past its run-time limit"))
    return found, reported


@_cloud_errors
def cleanup(settings: Settings, *, dry_run=False, yes=False, all_owners=False):
    from infra import provision

    vms = provision.list_vms(settings, mine_only=not all_owners)
    found, reported = orphans(settings, vms)

    def listing(pairs):
        return [{"name": v.name, "zone": v.zone, "owner": v.labels.get("ferry-owner"), "reason": why} for v, why in pairs]

    whose = "every owner's" if all_owners else "your"
    if settings.json and (dry_run or not found):
        return _emit_json({"dry_run": dry_run, "orphans": listing(found), "not_deleted": listing(reported), "deleted": []})
    out = _out()
    say = _err().print if settings.json else out.print
    for v, why in reported:
        say(f"  left alone: {v.name} ({v.zone}, {v.status}): {why}", markup=False)
    if not found:
        if not settings.json:
            out.print(f"nothing to clean up: {len(vms)} of {whose} ferry VM(s), none orphaned"
                      + ("" if all_owners else " (others' VMs: --all-owners)"))
        return
    for v, why in found:
        say(f"  orphaned: {v.name} ({v.zone}, {v.status}): {why}", markup=False)
    if dry_run:
        out.print(f"dry run: would delete {len(found)} VM(s); nothing changed")
        return
    confirm(f"delete {len(found)} orphaned VM(s)?", yes)
    targets = [(v.name, v.zone, provision.Proof(run_id=v.labels.get("ferry-run"), any_owner=all_owners)) for v, _ in found]
    with _Live() as live:
        results = provision.delete_many(settings, targets, progress=live)
    if settings.json:
        return _emit_json({"dry_run": False, "orphans": listing(found), "not_deleted": listing(reported),
                           "deleted": [n for n, ok in results.items() if ok]})
    for name, ok in results.items():
        out.print(f"{name}: {'deleted' if ok else 'already gone'}")


# --------------------------------------------------------------------------- gpus
def gpu_rows() -> list[dict]:
    from infra import catalog

    cat = catalog.load()
    rows = []
    for g in cat.gpus:
        count = g.counts[0]
        mt = g.machine_type(count)
        rows.append({
            "name": g.name, "api": g.api, "aliases": list(g.aliases), "memory_gb": g.memory_gb, "series": g.series,
            "attach": g.attach, "counts": list(g.counts),
            "machine_types": {str(k): v for k, v in g.machine_types.items()},
            "price_per_gpu_hour": g.price.get("gpu"), "spot_price_per_gpu_hour": g.price.get("spot_gpu"),
            "vm_price_per_hour": cat.price(g, count, mt), "vm_spot_price_per_hour": cat.price(g, count, mt, spot=True),
            "vm_price_for": f"{count} x {g.name} on {mt}",
            "price_date": g.price.get("date"), "price_source": cat.sources.get(g.price.get("source"), g.price.get("source")),
            "price_approximate": bool(g.price.get("approximate", True)),
            "end_of_life": g.end_of_life, "successor": g.successor,
        })
    return rows


def gpus(json_output: bool = False):
    rows = gpu_rows()
    if json_output:
        return _emit_json(rows)
    from infra.tables import Column, show

    columns = [Column("name"), Column("API name", drop=5), Column("memory", right=True, drop=1),
               Column("series", drop=2), Column("counts", drop=3), Column("VM (1st count)", drop=4),
               Column("$/h VM", right=True), Column("spot $/h", right=True), Column("end of life")]
    table = []
    for r in rows:
        eol = f"{r['end_of_life']} (use {r['successor']})" if r["end_of_life"] else "-"
        dim = "dim" if r["end_of_life"] else None
        cells = [r["name"], r["api"], f"{r['memory_gb']} GB", r["series"], ",".join(map(str, r["counts"])),
                 r["vm_price_for"].split(" on ")[1], _money(r["vm_price_per_hour"]),
                 _money(r["vm_spot_price_per_hour"]), eol]
        table.append([(c, dim) for c in cells])
    show(columns, table, title="GPUs: approximate USD/h in us-central1 (the whole VM; on demand, spot)",
         notes=["prices are dated per GPU (`gpus --json` shows each date and source); check "
                "cloud.google.com/compute/gpus-pricing before trusting a bill to the cent"])
