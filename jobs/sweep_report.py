"""A pulled sweep folder -> report.md, report.html and plots/ (PNG): statistics over seeds.

A sweep runs one job over a grid of parameters (`ferry sweep JOB --set lr=0.1,0.5 --set
seed=0..9`); `ferry sweep pull ID` leaves

    sweeps/ID/manifest.json            sweep_id, job, grid, tasks: [{index, params}, ...]
    sweeps/ID/tasks/<index>/...        each task exactly a single run's folder (jobs/report.py)

A configuration is a task's parameters less `seed`: tasks with the same configuration are
its replicates. For each configuration the report gives, over its succeeded tasks, the mean,
the sample standard deviation and a 95% confidence interval of the mean (Student t, n-1
degrees of freedom) of the headline metrics; for q6 the course's table with mean ± std in
every cell, and per dataset a paired t-test of NN+SVM against NN (one task trains one network
per dataset and fits the SVM on its logits, so the two conditions of one seed are a pair).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from jobs import report, runs
from jobs.report import ACC_KEYS, LOSS_KEYS, Q6_CONDITIONS, SVM_ACC_KEYS, _html_table, _md_table

SEED_KEYS = ("seed",)
USED_STATES = ("succeeded",)  # statistics are over these tasks only
Q6_DATASETS = (("MNIST", "NN on MNIST", "NN+SVM on MNIST"), ("SceneRec", "NN on SceneRec", "NN+SVM on SceneRec"))
STYLE = ("body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
         "img{max-width:100%;display:block;margin:1em 0}")


# --------------------------------------------------------------------------- numbers
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _frac(v) -> float | None:
    """An accuracy as 0..1 (a value above 1 is read as a percentage), None if not a number."""
    if not _is_num(v):
        return None
    return float(v) / 100 if v > 1.0 else float(v)


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _pp(v, sign: bool = False) -> str:
    """A spread or a difference of accuracies, in percentage points."""
    return "—" if v is None else (f"{100 * v:+.2f} pp" if sign else f"{100 * v:.2f} pp")


def _num(v) -> str:
    return "—" if v is None else report._num(float(v))


def _t_quantile(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def describe(values) -> dict:
    """n, mean, sample std (ddof 1) and the 95% CI of the mean (Student t, n-1 dof) of the
    numbers among `values`; std is None for n < 2 and ci None for n < 2."""
    vals = [float(v) for v in values if _is_num(v)]
    n = len(vals)
    if not n:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    mean = math.fsum(vals) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = _t_quantile(n) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci": (mean - half, mean + half)}


def paired_test(pairs: list[tuple[float, float]]) -> dict:
    """Paired t-test of b against a over (a, b) pairs: the mean of b - a, its 95% CI, t, the
    two-sided p-value and the verdict at 5%. Fewer than 2 pairs: no test."""
    from scipy import stats

    d = [float(b) - float(a) for a, b in pairs if _is_num(a) and _is_num(b)]
    n = len(d)
    out = {"n": n, "mean": None, "std": None, "ci": None, "t": None, "p": None, "significant": None}
    if n == 0:
        return {**out, "verdict": "no paired seeds: no test"}
    desc = describe(d)
    out.update(mean=desc["mean"], std=desc["std"], ci=desc["ci"])
    if n == 1:
        return {**out, "verdict": "n=1: no test (a paired t-test needs at least 2 seeds)"}
    if desc["std"] == 0:  # every seed differs by the same amount: the limit of the test
        t = math.copysign(math.inf, desc["mean"]) if desc["mean"] else 0.0
        p = 0.0 if desc["mean"] else 1.0
    else:
        t = desc["mean"] / (desc["std"] / math.sqrt(n))
        p = float(2 * stats.t.sf(abs(t), n - 1))
    sig = p < 0.05
    verdict = "significant at 5%" if sig else "not significant at 5%"
    if desc["std"] == 0:
        verdict += " (the difference is the same in every seed)"
    return {**out, "t": t, "p": p, "significant": sig, "verdict": verdict}


def _p(p) -> str:
    if p is None:
        return "—"
    return "< 0.0001" if p < 0.0001 else f"{p:.4f}"


def _tval(t) -> str:
    if t is None:
        return "—"
    return ("+∞" if t > 0 else "−∞") if math.isinf(t) else f"{t:.3f}"


# --------------------------------------------------------------------------- reading
def _js(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _index_key(i):
    return (0, i, "") if _is_num(i) else (1, 0, str(i))


def _param_text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _clean_metrics(metrics: list[dict]) -> list[dict]:
    """Rows with a numeric epoch (the rest cannot be put in order)."""
    return [r for r in metrics if isinstance(r, dict) and _is_num(r.get("epoch"))]


def load_tasks(sweep_dir: Path) -> tuple[dict, list[dict]]:
    """The sweep's manifest and its tasks, each with its folder's records (jobs/report.load).
    Tasks come from the manifest, and from task folders the manifest does not list."""
    manifest = _js(sweep_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    listed = [t for t in (manifest.get("tasks") or []) if isinstance(t, dict)] if isinstance(manifest.get("tasks"), list) else []
    by_index: dict[str, dict] = {}
    for pos, t in enumerate(listed):
        index = t.get("index", pos)
        by_index.setdefault(str(index), {"index": index, "params": t.get("params") if isinstance(t.get("params"), dict) else None})
    tasks_dir = sweep_dir / "tasks"
    if tasks_dir.is_dir():
        for d in sorted(tasks_dir.iterdir()):
            if d.is_dir() and d.name not in by_index:
                by_index[d.name] = {"index": int(d.name) if d.name.isdigit() else d.name, "params": None}
    tasks = []
    for key, t in sorted(by_index.items(), key=lambda kv: _index_key(kv[1]["index"])):
        d = tasks_dir / key
        rec = report.load(d) if d.is_dir() else {"manifest": {}, "status": {}, "summary": None, "metrics": []}
        status = rec["status"] if isinstance(rec["status"], dict) else {}
        summary = rec["summary"] if isinstance(rec["summary"], dict) else None
        params = t["params"]
        if params is None:  # a folder the manifest does not list: its own manifest's, if any
            mp = rec["manifest"].get("params") if isinstance(rec["manifest"], dict) else None
            params = mp if isinstance(mp, dict) else None
        if not d.is_dir():
            state = "missing"
        elif not status:
            state = "unknown"
        else:
            state = runs.effective_state(status)
        tasks.append({"index": t["index"], "dir": d, "params": params or {}, "known": params is not None, "state": state, "status": status,
                      "summary": summary, "metrics": _clean_metrics(rec["metrics"]),
                      "exit_code": status.get("exit_code"), "message": status.get("message")})
    return manifest, tasks


def _clean(d: dict) -> dict:
    """A record without the values no statistic can use: NaN, infinities, booleans."""
    return {k: v for k, v in d.items()
            if not isinstance(v, bool) and not (isinstance(v, float) and not math.isfinite(v))}


def best_accuracy(summary: dict | None, metrics: list[dict]) -> float | None:
    """jobs.runs.best_accuracy over the task's records, less the values it cannot use."""
    summary = _clean(summary or {})
    if isinstance(summary.get("svm"), dict):
        summary["svm"] = _clean(summary["svm"])
    return _frac(runs.best_accuracy(summary, [_clean(r) for r in metrics]))


def _last(rows: list[dict], keys) -> float | None:
    for r in reversed(rows):
        v = report._first(r, keys)
        if v is not None and _is_num(v):
            return v
    return None


def headline(task: dict) -> dict[str, tuple[str, str, float | None]]:
    """{metric key: (label, kind, value)} of one task: best test accuracy (as a run's report
    says it: jobs.runs.best_accuracy, the better head where the job has NN+SVM), the best
    NN+SVM test accuracy where the job fits one, the final test accuracy and the final loss
    (per series when the metrics carry several, as q6's two datasets)."""
    summary, metrics = task["summary"] or {}, task["metrics"]
    out = {"best": ("best test accuracy", "acc", best_accuracy(summary, metrics))}
    svm = summary.get("svm") if isinstance(summary.get("svm"), dict) else {}
    groups = report.series(metrics)
    svm_best = _frac(svm.get("best_test_accuracy"))
    if svm_best is None and len(groups) == 1:
        vals = [_frac(report._first(r, SVM_ACC_KEYS)) for r in metrics]
        vals = [v for v in vals if v is not None]
        svm_best = max(vals) if vals else None
    if svm_best is not None or svm:
        out["svm_best"] = ("best NN+SVM test accuracy", "acc", svm_best)
    if len(groups) <= 1:
        rows = next(iter(groups.values()), [])
        final = _frac(summary.get("final_test_accuracy"))
        out["final_acc"] = ("final test accuracy", "acc", final if final is not None else _frac(_last(rows, ACC_KEYS)))
        out["final_loss"] = ("final loss", "loss", _last(rows, LOSS_KEYS))
    else:
        for name, rows in groups.items():
            out[f"final_acc:{name}"] = (f"final test accuracy ({name})", "acc", _frac(_last(rows, ACC_KEYS)))
        for name, rows in groups.items():
            out[f"final_loss:{name}"] = (f"final loss ({name})", "loss", _last(rows, LOSS_KEYS))
    return out


# --------------------------------------------------------------------------- grouping
def _config_key(params: dict) -> str:
    return json.dumps({k: v for k, v in params.items() if k not in SEED_KEYS}, sort_keys=True, default=str)


def _seed(params: dict):
    for k in SEED_KEYS:
        if k in params:
            return params[k]
    return None


def label_keys(grid: dict, tasks: list[dict]) -> list[str]:
    """The parameters that name a configuration: the grid's (less seed), then any other
    that differs between tasks."""
    tasks = [t for t in tasks if t.get("known", True)]
    keys = [k for k in grid if k not in SEED_KEYS and any(k in t["params"] for t in tasks)]
    seen: dict[str, set] = {}
    for t in tasks:
        for k in t["params"]:
            if k in SEED_KEYS:
                continue
            seen.setdefault(k, set())
    for t in tasks:
        for k, vals in seen.items():
            vals.add(json.dumps(t["params"].get(k), sort_keys=True, default=str))
    keys += sorted(k for k, vals in seen.items() if len(vals) > 1 and k not in keys)
    return keys


def group(grid: dict, tasks: list[dict]) -> list[dict]:
    """The configurations, each with its tasks and its statistics, best mean first."""
    keys = label_keys(grid, tasks)
    groups: dict[str, dict] = {}
    for t in tasks:
        known = t.get("known", True)
        g = groups.setdefault(_config_key(t["params"]) if known else "?", {
            "params": {k: v for k, v in t["params"].items() if k not in SEED_KEYS},
            "label": (", ".join(f"{k}={_param_text(t['params'].get(k))}" for k in keys) or "(one configuration)")
            if known else "(parameters unknown)",
            "tasks": []})
        g["tasks"].append(t)
    for g in groups.values():
        used = [t for t in g["tasks"] if t["state"] in USED_STATES]
        g["used"] = used
        g["seeds"] = [_seed(t["params"]) for t in used]
        values: dict[str, dict] = {}
        order = ["best", "svm_best"]
        for t in used:
            for key, (label, kind, v) in headline(t).items():
                m = values.setdefault(key, {"label": label, "kind": kind, "values": []})
                m["values"].append(v)
                if key not in order:
                    order.append(key)
        g["stats"] = {k: {**values[k], **describe(values[k]["values"])} for k in order if k in values}
        g["q6"] = q6(used)
    out = list(groups.values())
    out.sort(key=lambda g: (g["stats"].get("best", {}).get("mean") is None, -(g["stats"].get("best", {}).get("mean") or 0.0), g["label"]))
    return out


# --------------------------------------------------------------------------- q6
def _q6_best(task: dict) -> dict[str, float | None]:
    summary = task["summary"] or {}
    cb = summary.get("conditions_best") if isinstance(summary.get("conditions_best"), dict) else {}
    table = {r["condition"]: r for r in report.q6_table(task["metrics"], summary)}
    out = {}
    for label, *_ in Q6_CONDITIONS:
        v = _frac(cb.get(label))
        out[label] = v if v is not None else _frac(table.get(label, {}).get("best_accuracy"))
    return out


def q6(used: list[dict]) -> dict | None:
    """The course's table over the configuration's q6 tasks (mean ± std per cell) and per
    dataset the paired t-test of NN+SVM against NN. None when no task is a q6 run."""
    tasks = [t for t in used if isinstance((t["summary"] or {}).get("conditions_best"), dict)]
    if not tasks:
        return None
    bests = [_q6_best(t) for t in tasks]
    tables = [{r["condition"]: r for r in report.q6_table(t["metrics"], t["summary"])} for t in tasks]
    rows = []
    for label, *_ in Q6_CONDITIONS:
        cells = {"best": describe([b[label] for b in bests])}
        for e in ("epoch0", "epoch9"):
            picked = [tb.get(label, {}).get(e) or {} for tb in tables]
            epochs = {p.get("epoch") for p in picked if p.get("epoch") is not None}
            cells[e] = {"epoch": next(iter(epochs)) if len(epochs) == 1 else ("last" if e == "epoch9" else "first") if epochs else None,
                        "loss": describe([p.get("loss") for p in picked]),
                        "accuracy": describe([_frac(p.get("accuracy")) for p in picked])}
        rows.append({"condition": label, **cells})
    tests = []
    for dataset, nn, svm in Q6_DATASETS:
        test = paired_test([(b[nn], b[svm]) for b in bests])
        tests.append({"dataset": dataset, "nn": nn, "svm": svm, **test})
    return {"n": len(tasks), "rows": rows, "tests": tests}


def _pm(desc: dict, kind: str, n_all: int | None = None) -> str:
    """mean ± std; the mean alone for n=1; — for none; (n=k) when fewer than the others."""
    if not desc["n"]:
        return "—"
    if kind == "acc":
        m = f"{100 * desc['mean']:.2f}"
        cell = f"{m} ± {100 * desc['std']:.2f}%" if desc["std"] is not None else f"{m}% (n=1)"
    else:
        cell = f"{_num(desc['mean'])} ± {_num(desc['std'])}" if desc["std"] is not None else f"{_num(desc['mean'])} (n=1)"
    if n_all is not None and desc["n"] > 1 and desc["n"] < n_all:
        cell += f" (n={desc['n']})"
    return cell


def _ci(desc: dict, kind: str) -> str:
    if desc["n"] == 0:
        return "—"
    if desc["ci"] is None:
        return "n=1, no interval"
    f = _pct if kind == "acc" else _num
    return f"{f(desc['ci'][0])} – {f(desc['ci'][1])}"


def _epoch_name(e) -> str:
    return "—" if e is None else str(e)


def q6_header(q: dict) -> list[str]:
    e0 = _epoch_name(q["rows"][0]["epoch0"]["epoch"])
    e9 = _epoch_name(q["rows"][0]["epoch9"]["epoch"])
    return ["condition", "n", "highest accuracy", f"epoch {e0} loss", f"epoch {e0} accuracy", f"epoch {e9} loss", f"epoch {e9} accuracy"]


def q6_rows(q: dict) -> list[list[str]]:
    n = q["n"]
    return [[r["condition"], r["best"]["n"], _pm(r["best"], "acc", n),
             _pm(r["epoch0"]["loss"], "loss", n), _pm(r["epoch0"]["accuracy"], "acc", n),
             _pm(r["epoch9"]["loss"], "loss", n), _pm(r["epoch9"]["accuracy"], "acc", n)] for r in q["rows"]]


def q6_text(q: dict) -> list[str]:
    """The course's shape, mean ± std over seeds."""
    lines = []
    for r in q["rows"]:
        lines.append(f"{r['condition']}: {_pm(r['best'], 'acc')} (highest accuracy, mean ± std over {r['best']['n']} seed{'s' if r['best']['n'] != 1 else ''})")
        for e in ("epoch0", "epoch9"):
            c = r[e]
            lines.append(f"  Epoch {_epoch_name(c['epoch'])} loss: {_pm(c['loss'], 'loss')} Accuracy: {_pm(c['accuracy'], 'acc')}")
    return lines


PAIR_HEADER = ["dataset", "paired seeds", "NN+SVM − NN (mean)", "95% CI of the difference", "t", "p (two-sided)", "verdict"]


def pair_rows(q: dict) -> list[list[str]]:
    return [[t["dataset"], t["n"], _pp(t["mean"], True),
             (f"{_pp(t['ci'][0], True)} to {_pp(t['ci'][1], True)}" if t["ci"] else ("n=1, no interval" if t["n"] == 1 else "—")),
             _tval(t["t"]), _p(t["p"]), t["verdict"]] for t in q["tests"]]


def pair_sentence(t: dict) -> str:
    if t["n"] < 2:
        return f"{t['dataset']}: {t['verdict']}."
    return (f"{t['dataset']}: NN+SVM − NN = {_pp(t['mean'], True)} (95% CI {_pp(t['ci'][0], True)} to "
            f"{_pp(t['ci'][1], True)}), paired t-test over {t['n']} seeds: t = {_tval(t['t'])}, p = {_p(t['p'])}: {t['verdict']}.")


# --------------------------------------------------------------------------- the report's data
def _state_counts(tasks: list[dict]) -> dict[str, int]:
    order = [*runs.STATES, "unknown", "missing"]
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def build(sweep_dir: Path) -> dict:
    manifest, tasks = load_tasks(sweep_dir)
    grid = manifest.get("grid") if isinstance(manifest.get("grid"), dict) else {}
    configs = group(grid, tasks)
    label_of = {id(t): g["label"] for g in configs for t in g["tasks"]}
    counts = _state_counts(tasks)
    job = manifest.get("job") or next((t["summary"].get("job") for t in tasks if t["summary"] and t["summary"].get("job")), "?")
    sweep_id = manifest.get("sweep_id") or sweep_dir.name
    grid_text = "; ".join(f"{k} = {', '.join(_param_text(v) for v in vals) if isinstance(vals, list) else _param_text(vals)}"
                          for k, vals in grid.items()) or "—"
    facts = [
        ("sweep", sweep_id),
        ("job", job),
        ("grid", grid_text),
        ("tasks", f"{len(tasks)}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) if tasks else "0"),
        ("configurations", str(len(configs))),
        ("Batch job", manifest.get("batch_job") or "—"),
        ("code", manifest.get("code_hash") or "—"),
        ("created", manifest.get("created") or "—"),
    ]
    not_ok = [[t["index"], label_of[id(t)], _param_text(_seed(t["params"])) if _seed(t["params"]) is not None else "—",
               t["state"], t["exit_code"] if t["exit_code"] is not None else "—", t["message"] or "—"]
              for t in tasks if t["state"] not in USED_STATES]
    overview = []
    for t in tasks:
        best = best_accuracy(t["summary"], t["metrics"]) if (t["summary"] or t["metrics"]) else None
        epochs = {r["epoch"] for r in t["metrics"]}
        overview.append([t["index"], label_of[id(t)], _param_text(_seed(t["params"])) if _seed(t["params"]) is not None else "—",
                         t["state"], _pct(best), len(epochs) if epochs else "—"])
    return {"title": f"{job} sweep: {sweep_id}", "job": job, "sweep_id": sweep_id, "grid": grid, "facts": facts,
            "counts": counts, "not_ok": not_ok, "configs": configs, "tasks": overview}


def _metric_keys(configs: list[dict]) -> list[str]:
    keys: list[str] = []
    for g in configs:
        keys += [k for k in g["stats"] if k not in keys]
    return keys


def _metric_label(configs, key) -> tuple[str, str]:
    for g in configs:
        if key in g["stats"]:
            return g["stats"][key]["label"], g["stats"][key]["kind"]
    return key, "acc"


def _seeds_text(g: dict) -> str:
    return ", ".join(_param_text(s) for s in g["seeds"] if s is not None) or "—"


def ranking(configs: list[dict]) -> tuple[list[str], list[list]]:
    keys = _metric_keys(configs)
    header = ["#", "configuration", "seeds", "n", "best test accuracy: mean", "std", "95% CI of the mean"]
    others = [k for k in keys if k != "best"]
    header += [f"{_metric_label(configs, k)[0]} (mean ± std)" for k in others]
    rows = []
    empty = {"n": 0, "mean": None, "std": None, "ci": None}
    for i, g in enumerate(configs, 1):
        b = g["stats"].get("best", empty)
        n_note = f"{len(g['used'])} of {len(g['tasks'])}" if len(g["used"]) != len(g["tasks"]) else str(len(g["used"]))
        row = [i, g["label"], _seeds_text(g), n_note, _pct(b["mean"]), _pp(b["std"]), _ci(b, "acc")]
        for k in others:
            s = g["stats"].get(k)
            row.append(_pm(s, s["kind"]) if s else "—")
        rows.append(row)
    return header, rows


DETAIL_HEADER = ["configuration", "metric", "n", "mean", "std", "95% CI of the mean"]


def details(configs: list[dict]) -> list[list]:
    rows = []
    for g in configs:
        for s in g["stats"].values():
            f = _pct if s["kind"] == "acc" else _num
            std = (_pp(s["std"]) if s["kind"] == "acc" else _num(s["std"])) if s["std"] is not None else ("n=1" if s["n"] == 1 else "—")
            rows.append([g["label"], s["label"], s["n"], f(s["mean"]), std, _ci(s, s["kind"])])
    return rows


# --------------------------------------------------------------------------- plots
def plot(sweep_dir: Path, configs: list[dict]) -> list[Path]:
    """plots/accuracy.png and plots/loss.png: per configuration (and series) the mean over its
    seeds per epoch, with a band from the lowest to the highest seed."""
    curves = []  # (label, {"acc": {epoch: [v]}, "loss": {...}})
    for g in configs:
        per_series: dict[str, dict] = {}
        for t in g["used"]:
            for name, rows in report.series(t["metrics"]).items():
                c = per_series.setdefault(name, {"acc": {}, "loss": {}})
                for r in rows:
                    a = _frac(report._first(r, ACC_KEYS))
                    if a is not None:
                        c["acc"].setdefault(r["epoch"], []).append(100 * a)
                    lo = report._first(r, LOSS_KEYS)
                    if lo is not None and _is_num(lo):
                        c["loss"].setdefault(r["epoch"], []).append(lo)
        for name, c in per_series.items():
            label = " ".join(x for x in (g["label"] if len(configs) > 1 else "", name) if x) or g["label"]
            curves.append((f"{label} (n={len(g['used'])})", c))
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    (sweep_dir / "plots").mkdir(exist_ok=True)
    out = []
    for kind, ylabel in (("acc", "test accuracy (%)"), ("loss", "loss")):
        fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
        drawn = 0
        for label, c in curves:
            pts = sorted(c[kind].items())
            if not pts:
                continue
            xs = [e for e, _ in pts]
            mean = [sum(v) / len(v) for _, v in pts]
            line, = ax.plot(xs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(xs, [min(v) for _, v in pts], [max(v) for _, v in pts], color=line.get_color(), alpha=0.2, linewidth=0)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        what = "test accuracy" if kind == "acc" else "loss"
        ax.set_title(f"{what} per epoch: mean over seeds, band = min..max over seeds", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="mean (line), min..max (band)", title_fontsize=8)
        if kind == "loss":
            vals = [v for _, c in curves for vs in c["loss"].values() for v in vs]
            if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
                ax.set_yscale("log")
        fig.tight_layout()
        path = sweep_dir / "plots" / ("accuracy.png" if kind == "acc" else "loss.png")
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


# --------------------------------------------------------------------------- rendering
METHOD = ("Statistics are over each configuration's succeeded tasks (its seeds): mean, sample standard "
          "deviation (n-1) and the 95% confidence interval of the mean (Student t, n-1 degrees of freedom). "
          "Accuracies are in %, their spreads and differences in percentage points (pp). Best test accuracy "
          "is a run's report's: where the job fits an NN+SVM head, the better of the two.")
Q6_NOTE = ("Each cell: mean ± sample std over seeds. NN and NN+SVM of one seed share one trained network, so "
           "NN+SVM is compared with NN by a paired t-test over seeds (two-sided) on the highest accuracy.")


def _q6_sections(configs: list[dict]) -> list[tuple[str, dict]]:
    qs = [(g["label"], g["q6"]) for g in configs if g["q6"]]
    return qs


def markdown(data: dict, plots: list[Path], sweep_dir: Path) -> str:
    out = [f"# {data['title']}", ""] + _md_table(["", ""], data["facts"]) + [""]
    if data["not_ok"]:
        out += ["## Tasks that did not succeed", ""]
        out += _md_table(["task", "configuration", "seed", "state", "exit code", "message"], data["not_ok"]) + [""]
    configs = data["configs"]
    if configs:
        out += ["## Configurations", "", METHOD, ""]
        header, rows = ranking(configs)
        out += _md_table(header, rows) + [""]
        out += ["### Every metric", ""] + _md_table(DETAIL_HEADER, details(configs)) + [""]
    qs = _q6_sections(configs)
    for label, q in qs:
        title = "## Q6: the course's table, over seeds" + (f" ({label})" if len(qs) > 1 else "")
        out += [title, "", Q6_NOTE, ""] + _md_table(q6_header(q), q6_rows(q)) + [""]
        out += ["```"] + q6_text(q) + ["```", ""]
        out += ["### NN+SVM against NN (paired t-test over seeds)", ""] + _md_table(PAIR_HEADER, pair_rows(q)) + [""]
        out += [f"- {pair_sentence(t)}" for t in q["tests"]] + [""]
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(sweep_dir).as_posix()})" for p in plots] + [""]
    if data["tasks"]:
        out += ["## Tasks", ""] + _md_table(["task", "configuration", "seed", "state", "best test accuracy", "epochs"], data["tasks"]) + [""]
    out += ["Each task's own report: `python cli.py pull` renders one per run; its folder is `tasks/<task>/`.", ""]
    return "\n".join(out)


def html_page(data: dict, plots: list[Path], sweep_dir: Path) -> str:
    e = html.escape
    parts = [f"<h1>{e(data['title'])}</h1>", _html_table(["", ""], data["facts"])]
    if data["not_ok"]:
        parts += ["<h2>Tasks that did not succeed</h2>",
                  _html_table(["task", "configuration", "seed", "state", "exit code", "message"], data["not_ok"])]
    configs = data["configs"]
    if configs:
        header, rows = ranking(configs)
        parts += ["<h2>Configurations</h2>", f"<p>{e(METHOD)}</p>", _html_table(header, rows),
                  "<h3>Every metric</h3>", _html_table(DETAIL_HEADER, details(configs))]
    qs = _q6_sections(configs)
    for label, q in qs:
        title = "Q6: the course's table, over seeds" + (f" ({label})" if len(qs) > 1 else "")
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(Q6_NOTE)}</p>", _html_table(q6_header(q), q6_rows(q)),
                  "<pre>" + e("\n".join(q6_text(q))) + "</pre>",
                  "<h3>NN+SVM against NN (paired t-test over seeds)</h3>", _html_table(PAIR_HEADER, pair_rows(q)),
                  "<ul>" + "".join(f"<li>{e(pair_sentence(t))}</li>" for t in q["tests"]) + "</ul>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{e(p.relative_to(sweep_dir).as_posix())}" alt="{e(p.stem)}">' for p in plots]
    if data["tasks"]:
        parts += ["<h2>Tasks</h2>", _html_table(["task", "configuration", "seed", "state", "best test accuracy", "epochs"], data["tasks"])]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{e(data['title'])}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _config_data(g: dict) -> dict:
    """One configuration as plain data (for callers and tests)."""
    return {"label": g["label"], "params": g["params"], "seeds": g["seeds"],
            "tasks": [t["index"] for t in g["tasks"]], "n": len(g["used"]),
            "stats": {k: {kk: s[kk] for kk in ("label", "kind", "n", "mean", "std", "ci")} for k, s in g["stats"].items()},
            "q6": g["q6"]}


def render(sweep_dir: Path) -> dict:
    """Write report.md, report.html and plots/ into sweep_dir; returns their paths and the
    configurations' statistics."""
    sweep_dir = Path(sweep_dir)
    data = build(sweep_dir)
    plots = plot(sweep_dir, data["configs"])
    md = sweep_dir / "report.md"
    md.write_text(markdown(data, plots, sweep_dir))
    page = sweep_dir / "report.html"
    page.write_text(html_page(data, plots, sweep_dir))
    return {"markdown": md, "html": page, "plots": plots, "configs": [_config_data(g) for g in data["configs"]]}
