#!/usr/bin/env python3
"""CLI latency: `--help`, `gpus`, and up -> SSH ready -> down on the local backend.

    .venv/bin/python bench/cli.py [--runs 7]

Prints medians next to a baseline measured in the same run (`python -c pass`, the floor of
any command), and the targets: --help < 150 ms, up + down on local < 3 s. Uses its own
temporary FERRY_HOME and stops the local service it starts.
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


def wall(argv: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr[-500:]}")
    return elapsed


def median(argv, env, runs) -> float:
    wall(argv, env)  # warm the page cache
    return statistics.median(wall(argv, env) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND")}
    env.update(FERRY_HOME=str(home), CLOUDSDK_CONFIG=str(home / "no-gcloud"))
    os.environ.update(FERRY_HOME=str(home), CLOUDSDK_CONFIG=str(home / "no-gcloud"))
    for k in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND"):
        os.environ.pop(k, None)

    base = median([PY, "-c", "pass"], env, args.runs)
    helpt = median([PY, "cli.py", "--help"], env, args.runs)
    gpus = median([PY, "cli.py", "gpus"], env, args.runs)
    print(f"baseline python -c pass      {base * 1000:7.0f} ms")
    print(f"cli.py --help                {helpt * 1000:7.0f} ms  ({helpt / base:.1f}x baseline; target < 150 ms: "
          f"{'ok' if helpt < 0.150 else 'MISSED'})")
    print(f"cli.py gpus                  {gpus * 1000:7.0f} ms  ({gpus / base:.1f}x baseline)")

    sys.path.insert(0, str(ROOT))
    from infra import provision
    from infra.local import service
    from infra.settings import resolve

    try:
        t = time.perf_counter()
        service.ensure_running(home)
        start = time.perf_counter() - t
        s = resolve()
        # What a command pays once for the Compute Engine client: the whole package (baseline)
        # against infra.clients.compute_api(), which loads only the services ferry uses.
        full = median([PY, "-c", "import google.cloud.compute_v1"], env, 3)
        lazy = median([PY, "-c", "from infra.clients import compute_api as a; c = a(); "
                       "[getattr(c, n) for n in ('InstancesClient', 'ZoneOperationsClient', 'ZonesClient', "
                       "'AcceleratorTypesClient', 'RegionsClient', 'Instance', 'Operation')]"], env, 3)
        py = median([PY, "-c", "pass"], env, 3)
        imp, imp_full = lazy - py, full - py
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
        t = time.perf_counter()
        wall([PY, "cli.py", "up", "--gpu", "t4", "--name", "bench-cli"], env)
        wall([PY, "cli.py", "down", "bench-cli"], env)
        cli_both = time.perf_counter() - t
        print(f"local service start          {start * 1000:7.0f} ms  (once per FERRY_HOME)")
        print(f"import compute_v1 (whole)    {imp_full * 1000:7.0f} ms  (baseline)")
        print(f"compute_api() (what we use)  {imp * 1000:7.0f} ms  ({imp / imp_full:.2f}x the whole package; "
              "once per command that calls the API)")
        print(f"up -> SSH ready (library)    {up_s * 1000:7.0f} ms  (median of {len(cycles)}; includes the 0.5 s "
              "settle that catches stockouts just after insert)")
        print(f"down (library)               {down_s * 1000:7.0f} ms")
        print(f"up + down (library)          {both * 1000:7.0f} ms  (target < 3 s: {'ok' if both < 3 else 'MISSED'})")
        print(f"cli.py up + cli.py down      {cli_both * 1000:7.0f} ms  (two processes; target < 3 s: {'ok' if cli_both < 3 else 'MISSED'})")
    finally:
        service.stop(home)


if __name__ == "__main__":
    main()
