"""Per-write cost of the local Cloud Storage as it fills.

    .venv/bin/python bench/local_storage.py                     # ferry's StorageServer, 0/1k/10k/100k objects
    .venv/bin/python bench/local_storage.py --levels 0,1000 --url http://127.0.0.1:4443   # any server

At each level the bucket is filled to that many objects (in-process through the store for ferry's
server; through the JSON API, 16 threads, for --url), then `--writes` 100-byte media uploads are
timed one after the other over one keep-alive connection. Prints medians and p90 and the ratio to
the empty store; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _upload(session: requests.Session, url: str, bucket: str, name: str, data: bytes) -> None:
    r = session.post(f"{url}/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": name},
                     data=data, headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="0,1000,10000,100000")
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--url", help="bench this server instead of an in-process StorageServer")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    payload = b"x" * 100

    tmp = tempfile.TemporaryDirectory(prefix="bench-storage-")
    server = store = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        from infra.local.storage import StorageServer

        t = time.perf_counter()
        server = StorageServer(Path(tmp.name) / "storage")
        server.serve_in_background()
        url, store = server.url, server.store
        print(f"start: {(time.perf_counter() - t) * 1e3:.1f} ms (empty store)")
    session = requests.Session()
    bucket = f"bench-{int(time.time())}"
    session.post(f"{url}/storage/v1/b", params={"project": "bench"}, json={"name": bucket}).raise_for_status()

    filled = 0

    def fill_to(n: int) -> None:
        nonlocal filled
        names = [f"fill/{i:07d}" for i in range(filled, n)]
        if store is not None:
            for name in names:
                src = store.new_upload_file()
                src.write_bytes(payload)
                store.put_object(bucket, name, src, {})
        else:
            local = __import__("threading").local()

            def one(name):
                s = getattr(local, "s", None) or setattr(local, "s", requests.Session()) or local.s
                _upload(s, url, bucket, name, payload)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(one, names))
        filled = n

    print(f"{'objects':>8} {'fill s':>7} {'median ms':>10} {'p90 ms':>7} {'x empty':>8}")
    base = None
    for level in levels:
        t = time.perf_counter()
        fill_to(level)
        fill_s = time.perf_counter() - t
        times = []
        for i in range(args.writes):
            t = time.perf_counter()
            _upload(session, url, bucket, f"timed/{level}/{i:05d}", payload)
            times.append((time.perf_counter() - t) * 1e3)
        filled += args.writes
        med = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        base = base or med
        print(f"{level:>8} {fill_s:>7.1f} {med:>10.2f} {p90:>7.2f} {med / base:>8.2f}", flush=True)
    if server is not None:
        server.shutdown()
        server.server_close()
        t = time.perf_counter()
        from infra.local.storage import StorageServer

        again = StorageServer(Path(tmp.name) / "storage")
        print(f"restart with {filled} objects (index rebuilt): {(time.perf_counter() - t) * 1e3:.0f} ms")
        again.server_close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
