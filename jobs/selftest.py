#!/usr/bin/env python3
"""A trivial job for ferry's tests and benchmarks (shipped to the VM as ferry_selftest.py).

Prints its message back verbatim, one line per fake epoch, writes metrics.jsonl and
summary.json like the trainer does, and exits with the status it is given.
"""

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="selftest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--message", default="hello")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--lines", type=int, default=0)
    p.add_argument("--exit-code", type=int, default=0)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "message.txt").write_text(a.message)
    print(f"selftest start: message={a.message!r}", flush=True)
    for i in range(a.lines):
        print(f"line {i}", flush=True)
    best = 0.0
    with open(a.out / "metrics.jsonl", "a") as m:
        for epoch in range(a.epochs):
            if a.sleep:
                time.sleep(a.sleep)
            loss = round(1.0 / (epoch + 1), 6)
            acc = round(1.0 - loss / 2, 6)
            best = max(best, acc)
            m.write(json.dumps({"epoch": epoch, "loss": loss, "test_accuracy": acc, "train_accuracy": acc, "time": time.time()}) + "\n")
            m.flush()
            print(f"epoch {epoch} loss {loss:.4f} accuracy {acc:.4f} t={time.time():.3f}", flush=True)
    print("selftest to stderr", file=sys.stderr, flush=True)
    (a.out / "summary.json").write_text(json.dumps({"job": "selftest", "best_test_accuracy": best, "epochs": a.epochs}))
    print(f"selftest end: exit {a.exit_code}", flush=True)
    return a.exit_code


if __name__ == "__main__":
    sys.exit(main())
