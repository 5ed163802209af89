"""jobs/sweep_report.py: a pulled sweep folder, built by hand, -> report.md/.html and plots."""

import json
import math

import numpy as np
from scipy import stats

from jobs import report, sweep_report

PNG = b"\x89PNG\r\n\x1a\n"


def write_sweep(d, job, grid, tasks):
    """tasks: [{"params", "status" (dict|None), "metrics" (list of rows or raw lines), "summary" (dict|None)}]."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({
        "sweep_id": d.name, "job": job, "grid": grid, "batch_job": "projects/p/locations/l/jobs/x",
        "code_hash": "abc123", "created": "2025-01-01T00:00:00Z",
        "tasks": [{"index": i, "params": t["params"]} for i, t in enumerate(tasks)]}))
    for i, t in enumerate(tasks):
        td = d / "tasks" / str(i)
        td.mkdir(parents=True)
        if t.get("status") is not None:
            (td / "status.json").write_text(json.dumps(t["status"]))
        lines = [r if isinstance(r, str) else json.dumps(r) for r in t.get("metrics", [])]
        if lines:
            (td / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        if t.get("summary") is not None:
            (td / "summary.json").write_text(json.dumps(t["summary"]))


def ok(exit_code=0, state="succeeded", message=None):
    return {"state": state, "exit_code": exit_code, "started": "2025-01-01T00:00:00Z",
            "ended": "2025-01-01T00:01:00Z", "message": message}


def selftest_rows(accs, final_loss):
    return [{"epoch": e, "loss": (final_loss if e == len(accs) - 1 else 1.0 / (e + 1)), "test_accuracy": a,
             "train_accuracy": a, "time": 1.0e9 + e} for e, a in enumerate(accs)]


def pct(x):
    return f"{100 * x:.2f}%"


def expected(values):
    v = np.array(values, dtype=float)
    n = len(v)
    mean, std = v.mean(), v.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == PNG


def test_selftest_sweep_statistics_failed_task_and_plots(tmp_path):
    d = tmp_path / "selftest-sweep"
    curves = {  # (lr, seed): test accuracy per epoch, the final loss
        (0.1, 0): ([0.50, 0.70, 0.80], 0.30), (0.1, 1): ([0.50, 0.72, 0.82], 0.28), (0.1, 2): ([0.60, 0.75, 0.87], 0.25),
        (0.5, 0): ([0.70, 0.85, 0.90], 0.20), (0.5, 1): ([0.70, 0.90, 0.94], 0.10),
    }
    tasks = []
    for lr in (0.1, 0.5):
        for seed in (0, 1, 2):
            params = {"epochs": 3, "message": "hi", "lr": lr, "seed": seed}
            if (lr, seed) not in curves:  # this one failed after an epoch, no summary
                tasks.append({"params": params, "status": ok(3, "failed", "CUDA out of memory"),
                              "metrics": selftest_rows([0.99], 0.01)})
                continue
            accs, loss = curves[(lr, seed)]
            rows = selftest_rows(accs, loss)
            summary = {"job": "selftest", "best_test_accuracy": max(accs), "epochs": 3}
            if (lr, seed) == (0.1, 1):  # non-numeric values and broken lines: the metrics' own best is used
                summary["best_test_accuracy"] = "n/a"
                rows = [rows[0], "not json", {"epoch": "x", "test_accuracy": "high"}, *rows[1:]]
            tasks.append({"params": params, "status": ok(), "metrics": rows, "summary": summary})
    write_sweep(d, "selftest", {"lr": [0.1, 0.5], "seed": [0, 1, 2]}, tasks)

    out = sweep_report.render(d)
    md = out["markdown"].read_text()

    assert "| job | selftest |" in md
    assert "| grid | lr = 0.1, 0.5; seed = 0, 1, 2 |" in md
    assert "| tasks | 6: 5 succeeded, 1 failed |" in md
    assert "| 5 | lr=0.5 | 2 | failed | 3 | CUDA out of memory |" in md  # the failed task, its exit code and message

    for lr in (0.1, 0.5):
        seeds = [s for s in (0, 1, 2) if (lr, s) in curves]
        best = [max(curves[(lr, s)][0]) for s in seeds]
        final = [curves[(lr, s)][0][-1] for s in seeds]
        loss = [curves[(lr, s)][1] for s in seeds]
        n = len(seeds)
        m, s, lo, hi = expected(best)
        assert f"| lr={lr} | best test accuracy | {n} | {pct(m)} | {100 * s:.2f} pp | {pct(lo)} – {pct(hi)} |" in md
        m, s, lo, hi = expected(final)
        assert f"| lr={lr} | final test accuracy | {n} | {pct(m)} | {100 * s:.2f} pp | {pct(lo)} – {pct(hi)} |" in md
        m, s, lo, hi = expected(loss)
        assert (f"| lr={lr} | final loss | {n} | {report._num(m)} | {report._num(s)} | "
                f"{report._num(lo)} – {report._num(hi)} |") in md
        cfg = next(c for c in out["configs"] if c["params"]["lr"] == lr)
        assert cfg["n"] == n and cfg["seeds"] == seeds
        assert math.isclose(cfg["stats"]["best"]["mean"], np.mean(best))
        assert math.isclose(cfg["stats"]["best"]["std"], np.std(best, ddof=1))

    # sorted by mean best accuracy: lr=0.5 (92%) before lr=0.1 (83%); lr=0.5 has 2 of its 3 tasks
    m, s, lo, hi = expected([0.90, 0.94])
    assert f"| 1 | lr=0.5 | 0, 1 | 2 of 3 | {pct(m)} | {100 * s:.2f} pp | {pct(lo)} – {pct(hi)} |" in md
    assert "| 2 | lr=0.1 | 0, 1, 2 | 3 |" in md
    assert [c["label"] for c in out["configs"]] == ["lr=0.5", "lr=0.1"]
    assert "Q6" not in md

    names = {p.name for p in out["plots"]}
    assert names == {"accuracy.png", "loss.png"}
    assert all(is_png(p) for p in out["plots"])
    assert "![accuracy](plots/accuracy.png)" in md
    page = out["html"].read_text()
    assert page.startswith("<!doctype html>") and 'src="plots/accuracy.png"' in page
    assert "<td>CUDA out of memory</td>" in page and "<td>lr=0.5</td>" in page


Q6_BEST = {  # seed: conditions_best; MNIST: NN+SVM higher in every seed; SceneRec: up and down
    0: {"NN on MNIST": 0.90, "NN+SVM on MNIST": 0.920, "NN on SceneRec": 0.60, "NN+SVM on SceneRec": 0.63},
    1: {"NN on MNIST": 0.91, "NN+SVM on MNIST": 0.935, "NN on SceneRec": 0.62, "NN+SVM on SceneRec": 0.60},
    2: {"NN on MNIST": 0.92, "NN+SVM on MNIST": 0.941, "NN on SceneRec": 0.58, "NN+SVM on SceneRec": 0.59},
}


def q6_task(seed, best):
    rows = []  # the trainer's shape: one network per dataset, SVM fitted after epochs 0 and 9
    for label, ds, pretty in (("mnist", "mnist", "MNIST"), ("scene", "15scene", "SceneRec")):
        nn, svm = best[f"NN on {pretty}"], best[f"NN+SVM on {pretty}"]
        for e in range(10):
            r = {"job": label, "dataset": ds, "epoch": e, "loss": (100.0 if ds == "mnist" else 200.0) * (1 + seed / 10) / (e + 1),
                 "loss_kind": "sum", "train_accuracy": nn, "test_accuracy": round(nn - (9 - e) / 100, 6)}
            if e in (0, 9):
                r.update(svm_test_accuracy=round(svm - (0.05 if e == 0 else 0), 6), svm_fit_after_epoch=e)
            rows.append(r)
    summary = {"job": "q6", "mode": "stencil", "seed": seed, "best_test_accuracy": max(best.values()),
               "conditions_best": best, "datasets": {}}
    return {"params": {"epochs": 10, "mode": "stencil", "lr": 0.001, "seed": seed}, "status": ok(),
            "metrics": rows, "summary": summary}


def pm(values, acc=True):
    v = np.array(values, dtype=float)
    m, s = v.mean(), v.std(ddof=1)
    return f"{100 * m:.2f} ± {100 * s:.2f}%" if acc else f"{report._num(float(m))} ± {report._num(float(s))}"


def test_q6_sweep_course_table_and_paired_tests(tmp_path):
    d = tmp_path / "q6-sweep"
    write_sweep(d, "q6", {"seed": [0, 1, 2]}, [q6_task(s, Q6_BEST[s]) for s in (0, 1, 2)])
    out = sweep_report.render(d)
    md = out["markdown"].read_text()
    seeds = (0, 1, 2)

    col = lambda cond: [Q6_BEST[s][cond] for s in seeds]
    # every cell mean ± std over the seeds
    nn_m = col("NN on MNIST")
    e0 = [round(a - 0.09, 6) for a in nn_m]
    loss0, loss9 = [100.0 * (1 + s / 10) for s in seeds], [10.0 * (1 + s / 10) for s in seeds]
    assert (f"| NN on MNIST | 3 | {pm(nn_m)} | {pm(loss0, False)} | {pm(e0)} | {pm(loss9, False)} | {pm(nn_m)} |") in md
    svm_m = col("NN+SVM on MNIST")
    assert (f"| NN+SVM on MNIST | 3 | {pm(svm_m)} | {pm(loss0, False)} | {pm([round(a - 0.05, 6) for a in svm_m])} | "
            f"{pm(loss9, False)} | {pm(svm_m)} |") in md
    assert f"| NN on SceneRec | 3 | {pm(col('NN on SceneRec'))} |" in md
    assert f"| NN+SVM on SceneRec | 3 | {pm(col('NN+SVM on SceneRec'))} |" in md
    assert "| condition | n | highest accuracy | epoch 0 loss | epoch 0 accuracy | epoch 9 loss | epoch 9 accuracy |" in md
    assert f"NN on MNIST: {pm(nn_m)} (highest accuracy, mean ± std over 3 seeds)" in md

    # the paired t-tests, against scipy's
    for dataset, pretty, verdict in (("MNIST", "MNIST", "significant at 5%"), ("SceneRec", "SceneRec", "not significant at 5%")):
        nn, svm = col(f"NN on {pretty}"), col(f"NN+SVM on {pretty}")
        res = stats.ttest_rel(svm, nn)
        diff = np.array(svm) - np.array(nn)
        m, _, lo, hi = expected(diff)
        row = next(line for line in md.splitlines() if line.startswith(f"| {dataset} | 3 |"))
        assert row == (f"| {dataset} | 3 | {100 * m:+.2f} pp | {100 * lo:+.2f} pp to {100 * hi:+.2f} pp | "
                       f"{res.statistic:.3f} | {res.pvalue:.4f} | {verdict} |")
        assert (res.pvalue < 0.05) == (verdict == "significant at 5%")
        sentence = next(line for line in md.splitlines() if line.startswith(f"- {dataset}: "))
        assert sentence.endswith(f"p = {res.pvalue:.4f}: {verdict}.")
    q = out["configs"][0]["q6"]
    assert [t["significant"] for t in q["tests"]] == [True, False]

    assert "| tasks | 3: 3 succeeded |" in md
    assert "| (one configuration) | final test accuracy (mnist) | 3 |" in md
    acc = d / "plots" / "accuracy.png"
    assert acc in out["plots"] and is_png(acc)
    assert "Q6: the course" in out["html"].read_text()


def test_one_task_sweep_says_no_interval(tmp_path):
    d = tmp_path / "one"
    write_sweep(d, "selftest", {}, [{"params": {"message": "hi", "epochs": 2}, "status": ok(),
                                     "metrics": selftest_rows([0.5, 0.75], 0.5),
                                     "summary": {"job": "selftest", "best_test_accuracy": 0.75, "epochs": 2}}])
    out = sweep_report.render(d)
    md = out["markdown"].read_text()
    assert "| (one configuration) | best test accuracy | 1 | 75.00% | n=1 | n=1, no interval |" in md
    assert "| 1 | (one configuration) | — | 1 | 75.00% | — | n=1, no interval |" in md
    assert all(is_png(p) for p in out["plots"]) and out["plots"]
    assert out["html"].read_text().startswith("<!doctype html>")


def test_one_q6_task_and_missing_files(tmp_path):
    d = tmp_path / "q6-one"
    t = q6_task(0, Q6_BEST[0])
    write_sweep(d, "q6", {"seed": [0, 1]}, [t, {"params": {**t["params"], "seed": 1}, "status": None}])
    (d / "tasks" / "2").mkdir()  # a folder the manifest does not list, empty
    out = sweep_report.render(d)
    md = out["markdown"].read_text()
    assert "n=1: no test (a paired t-test needs at least 2 seeds)" in md
    assert "| NN on MNIST | 1 | 90.00% (n=1) |" in md
    assert "| 1 | (one configuration) | 1 | unknown | — | — |" in md
    assert "| 2 | (parameters unknown) | — | unknown | — | — |" in md

    empty = tmp_path / "empty"
    empty.mkdir()
    out = sweep_report.render(empty)
    assert out["plots"] == [] and out["configs"] == []
    assert "| tasks | 0 |" in out["markdown"].read_text()
