"""What every job writes into --out: metrics.jsonl (one object per epoch, appended and
flushed as it happens) and summary.json; and one flushed progress line per epoch on stdout."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

LIBRARIES = ("numpy", "scikit-learn", "pillow", "numba", "cupy", "cupy-cuda12x", "tensorflow")


class Run:
    def __init__(self, out: Path):
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics = open(self.out / "metrics.jsonl", "w", encoding="utf-8")
        except OSError as e:
            from trainer.errors import TrainerError
            raise TrainerError(f"--out {out}: cannot write there ({e.strerror})") from None
        self.started = time.time()
        self.records: list[dict] = []

    def epoch(self, record: dict, line: str) -> None:
        self.records.append(record)
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        say(line)

    def restore(self, records: list[dict]) -> None:
        """A resumed job: the epochs done before the checkpoint, back into metrics.jsonl
        (byte for byte what they were), without printing them again."""
        for record in records:
            self.records.append(record)
            self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def summary(self, summary: dict) -> dict:
        self.metrics.close()
        summary = {**summary, "total_seconds": round(time.time() - self.started, 3),
                   "libraries": versions(), "hardware": hardware(summary.get("gpu"))}
        path = self.out / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return summary


def best_accuracy(summary: dict | None, metrics: list[dict] | None = None) -> float | None:
    """The run's best test accuracy, as 0..1: the highest over its epochs, and for a job with
    NN and NN+SVM heads the better head's (q6: the best of its four conditions). From the
    summary first, else from its metrics (a run still going, or one that died): the same
    rule, so `runs`, `run`'s last line and the report's "Best test accuracy" agree."""
    summary = summary or {}
    svm = summary.get("svm") if isinstance(summary.get("svm"), dict) else {}
    for key in ("best_test_accuracy", "best_accuracy", "test_accuracy", "accuracy"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            other = svm.get("best_test_accuracy")  # NN+SVM jobs: the better of the two heads
            return float(max(value, other)) if isinstance(other, (int, float)) else float(value)
    best = None
    for row in metrics or ():
        if not isinstance(row, dict):
            continue
        for keys in (("test_accuracy", "accuracy", "test_acc", "val_accuracy"), ("svm_test_accuracy",)):
            for key in keys:  # the first of the NN's names, and the NN+SVM head's
                value = row.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    best = float(value) if best is None else max(best, float(value))
                    break
    return best


ROW_KEY = "ferry-row"  # status.json's custom metadata: the figures `runs` lists without reading a run


def row(status: dict, job: str | None, vm: str | None = None, summary: dict | None = None,
        metrics: list[dict] | None = None) -> str:
    """What `runs` shows of a run, compact JSON for status.json's metadata (Cloud Storage
    returns it in the listing: one request per 1000 runs)."""
    segments = status.get("segments")
    return json.dumps({
        "job": job, "state": status.get("state"), "started": status.get("started"), "ended": status.get("ended"),
        "heartbeat": status.get("heartbeat"), "heartbeat_interval": status.get("heartbeat_interval"),
        "exit_code": status.get("exit_code"), "recoveries": max(0, len(segments) - 1) if isinstance(segments, list) else 0,
        "vm": vm, "gpu": status.get("gpu"), "best": best_accuracy(summary, metrics),
    }, separators=(",", ":"))


def say(line: str) -> None:
    print(line, flush=True)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(gpu: str | None = None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "memory_gib": memory, "gpu": gpu,
            "platform": platform.platform(), "executable": sys.executable}
