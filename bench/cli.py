#!/usr/bin/env python3
"""CLI latency: `--help`, `gpus`, `status`, and up -> SSH ready -> down on the local backend.

    .venv/bin/python bench/cli.py [--runs 7] [--before DIR]

Every command runs as its own process, the way a user runs it; the commands are interleaved
(one round runs each once, `--runs` rounds) and medians are reported next to a baseline
measured in the same rounds (`python -c pass`, the floor of any command). Targets: --help
< 150 ms; `status` (0 VMs, local service running) at most 0.5 s above the baseline;
`up` + `down` as two processes < 3 s. `status` is also timed with `--vms` VMs up (30 by
default; a second local cloud without SSH servers holds them).

`--before DIR`: the same commands, in the same rounds, from another ferry tree (e.g. the
commit before a change: `git archive COMMIT | tar -x -C DIR`), with the same Python, the same
local service and FERRY_HOME: before/after ratios that share every condition but the code.

Also printed: what the Compute Engine client costs to import (the whole compute_v1 package,
`infra.clients.compute_api()`'s lazy subset of it, and what ferry loads instead: infra.gce over
google-auth's AuthorizedSession), and up/down as library calls. Uses its own temporary
FERRY_HOME and stops the local service it starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def wall(argv: list[str], env: dict, cwd: Path = ROOT) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} (in {cwd}) failed: {proc.stderr[-500:]}")
    return elapsed


def median(argv, env, runs) -> float:
    wall(argv, env)  # warm the page cache
    return statistics.median(wall(argv, env) for _ in range(runs))


def interleaved(cases: dict, env: dict, runs: int) -> dict:
    """{label: [step, ...]} (a step: (argv, cwd)) -> {label: median seconds of the steps' sum},
    each round running every case once, so that load on the machine hits all of them alike."""
    for steps in cases.values():  # warm the page cache (and each tree's bytecode)
        for argv, cwd in steps:
            wall(argv, env, cwd)
    times: dict = {label: [] for label in cases}
    for _ in range(runs):
        for label, steps in cases.items():
            times[label].append(sum(wall(argv, env, cwd) for argv, cwd in steps))
    return {label: statistics.median(values) for label, values in times.items()}


def status_with_vms(n: int, trees: dict, env: dict, runs: int) -> dict:
    """`status` with N ferry VMs up: a second local cloud without SSH servers (VM runtime `none`,
    instances inserted through infra.gce with ferry's own body), each tree's `status` interleaved."""
    from infra import gce, render, templates
    from infra.local import service
    from infra.settings import owner

    home = Path(tempfile.mkdtemp(prefix="ferry-bench-vms-"))
    env = dict(env, FERRY_HOME=str(home), CLOUDSDK_CONFIG=str(home / "no-gcloud"))
    try:
        ep = service.ensure_running(home, vm_runtime="none")
        from google.oauth2.credentials import Credentials

        api = gce.Gce(Credentials(token=ep.token), ep.compute)
        spec = templates.load(None, gpu="t4")
        key = "ferry:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk6f9+4N0D2S1XT1Hcb5Hc6O9h1ZGvK8d5o7x6B1s6E ferry"
        zones = ["us-central1-a", "us-east1-c", "europe-west4-a", "asia-east1-a", "us-west1-a"]  # 16 T4s each
        ops = []
        for i in range(n):
            zone = zones[i % len(zones)]
            body = render.body(spec, name=f"bench-many-{i}", zone=zone, owner=owner(), ssh_keys=key)
            ops.append((zone, api.instances.insert(project="ferry-local", zone=zone, instance_resource=body)))
        for zone, op in ops:
            while op.get("status") != "DONE":
                op = api.zone_operations.wait(project="ferry-local", zone=zone, operation=op["name"], timeout=5)
            if op.get("error"):
                raise SystemExit(f"--vms {n}: an insert in {zone} failed: {op['error']}")
        cases = {f"cli.py status, {n} VMs{suffix}": [([PY, str(tree / "cli.py"), "status"], tree)]
                 for suffix, tree in trees.items()}
        return interleaved(cases, env, runs)
    finally:
        service.stop(home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, help="another ferry tree to compare with (same commands, same rounds)")
    parser.add_argument("--vms", type=int, default=30, help="also time `status` with this many VMs up (0: skip)")
    args = parser.parse_args()
    if args.before is not None and not (args.before / "cli.py").exists():
        raise SystemExit(f"--before {args.before}: no cli.py there (give a ferry tree, e.g. from `git archive`)")
    home = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    # Users' Python caches bytecode: a PYTHONDONTWRITEBYTECODE inherited from a test shell would
    # time compiling every module changed since its .pyc was last written (10 ms for one file).
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "PYTHONDONTWRITEBYTECODE")}
    env.update(FERRY_HOME=str(home), CLOUDSDK_CONFIG=str(home / "no-gcloud"))
    os.environ.update(FERRY_HOME=str(home), CLOUDSDK_CONFIG=str(home / "no-gcloud"))
    for k in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND"):
        os.environ.pop(k, None)

    sys.path.insert(0, str(ROOT))
    from infra import provision
    from infra.local import service
    from infra.settings import resolve

    try:
        t = time.perf_counter()
        service.ensure_running(home)
        start = time.perf_counter() - t
        trees = {"": ROOT} if args.before is None else {"": ROOT, " (before)": args.before.resolve()}
        cases = {"baseline python -c pass": [([PY, "-c", "pass"], ROOT)]}
        for suffix, tree in trees.items():
            cli = str(tree / "cli.py")
            cases[f"cli.py --help{suffix}"] = [([PY, cli, "--help"], tree)]
            cases[f"cli.py status{suffix}"] = [([PY, cli, "status"], tree)]
            cases[f"cli.py up + down{suffix}"] = [([PY, cli, "up", "--gpu", "t4", "--name", "bench-cli"], tree),
                                                   ([PY, cli, "down", "bench-cli", "--yes"], tree)]
        med = interleaved(cases, env, args.runs)
        base = med["baseline python -c pass"]
        gpus = median([PY, "cli.py", "gpus"], env, args.runs)

        def line(label: str, note: str = "") -> None:
            value = med[label]
            text = f"{label:<30}{value * 1000:7.0f} ms  ({value / base:.1f}x baseline, +{(value - base) * 1000:.0f} ms"
            before = med.get(label + " (before)")
            if before is not None and not label.endswith("(before)"):
                text += f"; {value / before:.2f}x before"
            print(text + ")" + (f"  {note}" if note else ""))

        print(f"medians of {args.runs} interleaved rounds, each command its own process")
        line("baseline python -c pass")
        for suffix in trees:
            h, s, ud = (med[f"cli.py {c}{suffix}"] for c in ("--help", "status", "up + down"))
            line(f"cli.py --help{suffix}", f"target < 150 ms: {'ok' if h < 0.150 else 'MISSED'}")
            line(f"cli.py status{suffix}", f"0 VMs; target <= baseline + 500 ms: {'ok' if s - base <= 0.5 else 'MISSED'}")
            line(f"cli.py up + down{suffix}", f"two processes; target < 3 s: {'ok' if ud < 3 else 'MISSED'}")
        print(f"{'cli.py gpus':<30}{gpus * 1000:7.0f} ms  ({gpus / base:.1f}x baseline)")
        if args.vms:
            many = status_with_vms(args.vms, trees, env, args.runs)
            for suffix in trees:
                label = f"cli.py status, {args.vms} VMs{suffix}"
                value = many[label]
                before = many.get(label + " (before)") if not suffix else None
                print(f"{label:<30}{value * 1000:7.0f} ms  ({value / base:.1f}x baseline"
                      + (f"; {value / before:.2f}x before" if before else "") + ")")

        # What a command pays to import a Compute Engine client: the whole compute_v1 package,
        # compute_api()'s subset of it (what every cloud command paid before infra.gce), and
        # infra.gce with the google-auth transport it runs on (what it pays now).
        full = median([PY, "-c", "import google.cloud.compute_v1"], env, 3)
        lazy = median([PY, "-c", "from infra.clients import compute_api as a; c = a(); "
                       "[getattr(c, n) for n in ('InstancesClient', 'ZoneOperationsClient', 'ZonesClient', "
                       "'AcceleratorTypesClient', 'RegionsClient', 'Instance', 'Operation')]"], env, 3)
        rest = median([PY, "-c", "import infra.gce, google.auth.transport.requests, google.oauth2.credentials"], env, 3)
        py = median([PY, "-c", "pass"], env, 3)
        imp_full, imp_lazy, imp_rest = full - py, lazy - py, rest - py
        print(f"{'import compute_v1 (whole)':<30}{imp_full * 1000:7.0f} ms  (baseline)")
        print(f"{'compute_api() (its subset)':<30}{imp_lazy * 1000:7.0f} ms  ({imp_lazy / imp_full:.2f}x the whole package; "
              "what each cloud command paid before infra.gce)")
        print(f"{'infra.gce + AuthorizedSession':<30}{imp_rest * 1000:7.0f} ms  ({imp_rest / imp_full:.2f}x the whole package; "
              f"{(imp_lazy - imp_rest) * 1000:.0f} ms less than compute_api() per command)")

        s = resolve()
        cycles = []
        for i in range(max(3, args.runs // 2)):
            t0 = time.perf_counter()
            vm = provision.up(s, gpu="t4", name=f"bench-{i}")
            t1 = time.perf_counter()
            provision.delete(s, vm.name, vm.zone)
            t2 = time.perf_counter()
            cycles.append((t1 - t0, t2 - t1, t2 - t0))
        up_s = statistics.median(c[0] for c in cycles)
        down_s = statistics.median(c[1] for c in cycles)
        both = statistics.median(c[2] for c in cycles)
        print(f"{'local service start':<30}{start * 1000:7.0f} ms  (once per FERRY_HOME)")
        print(f"{'up -> SSH ready (library)':<30}{up_s * 1000:7.0f} ms  (median of {len(cycles)}; includes the 0.5 s "
              "settle that catches stockouts just after insert)")
        print(f"{'down (library)':<30}{down_s * 1000:7.0f} ms")
        print(f"{'up + down (library)':<30}{both * 1000:7.0f} ms  (target < 3 s: {'ok' if both < 3 else 'MISSED'})")
    finally:
        service.stop(home)


if __name__ == "__main__":
    main()
