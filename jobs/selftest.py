#!/usr/bin/env python3
"""A trivial job for ferry's tests and benchmarks (shipped to the VM as ferry_selftest.py).

Prints its message back verbatim, one line per fake epoch, writes metrics.jsonl and
summary.json like the trainer does, and exits with the status it is given. Like the trainer
it writes a checkpoint after every epoch (trainer/checkpoint.py's format) and continues from
one with --resume DIR, so that ferry's recovery is tested in seconds.
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
    p.add_argument("--resume", type=Path)
    a = p.parse_args(argv)
    from trainer import checkpoint, stopping
    from trainer.errors import TrainerError

    stopping.install()
    try:
        ckpt = checkpoint.Checkpointer(a.out, {"job": "selftest", "params": {"epochs": a.epochs, "message": a.message},
                                               "code_hash": checkpoint.code_hash()}, a.resume)
    except TrainerError as exc:
        print(f"selftest: error: {exc}", file=sys.stderr, flush=True)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "message.txt").write_text(a.message)
    state = ckpt.state or {"epoch": -1, "records": []}
    records = list(state["records"])
    print(f"selftest start: message={a.message!r}" + (f" (resumed after epoch {state['epoch']})" if ckpt.state else ""),
          flush=True)
    for i in range(a.lines):
        print(f"line {i}", flush=True)
    best = max([r["test_accuracy"] for r in records], default=0.0)
    with open(a.out / "metrics.jsonl", "w") as m:
        m.writelines(json.dumps(r) + "\n" for r in records)
        m.flush()
        try:
            for epoch in range(state["epoch"] + 1, a.epochs):
                if a.sleep:
                    time.sleep(a.sleep)
                loss = round(1.0 / (epoch + 1), 6)
                acc = round(1.0 - loss / 2, 6)
                best = max(best, acc)
                rec = {"epoch": epoch, "loss": loss, "test_accuracy": acc, "train_accuracy": acc, "time": time.time()}
                records.append(rec)
                with stopping.commit():
                    ckpt.save({"epoch": epoch, "records": records})
                    print(f"epoch {epoch} loss {loss:.4f} accuracy {acc:.4f} t={time.time():.3f}", flush=True)
                    m.write(json.dumps(rec) + "\n")
                    m.flush()
        except KeyboardInterrupt:
            print("selftest: stopped", file=sys.stderr, flush=True)
            return 130
    print("selftest to stderr", file=sys.stderr, flush=True)
    (a.out / "summary.json").write_text(json.dumps({"job": "selftest", "best_test_accuracy": best, "epochs": a.epochs}))
    print(f"selftest end: exit {a.exit_code}", flush=True)
    return a.exit_code


if __name__ == "__main__":
    sys.exit(main())
