"""A pulled run folder -> report.md, report.html and loss/accuracy plots (PNG).

Reads what the run left in the bucket: manifest.json, status.json, metrics.jsonl (one JSON
object per epoch; rows may carry a `condition`, as q6's do), summary.json, artifacts/,
logs/output.log.

What a report shows, in this order: the answer (final and best test accuracy, each labelled;
the device the job trained on; the mode), the course's table in the course's shape (for q6
the four conditions, for a single-condition job its NN and NN+SVM rows: the highest test
accuracy and the loss and accuracy at epoch 0 and at epoch 9, the last epoch when fewer were
run), the epochs table (NN and NN+SVM columns), the plots, the settings used, the VMs, and
the run's facts.

One vocabulary throughout, defined here once:
- final test accuracy: the last epoch's (for NN+SVM: the last fit's);
- best test accuracy: the highest over the epochs (the course's "highest accuracy"); for a
  run with NN and NN+SVM heads, the better head's. It is trainer/report.py's
  `best_accuracy`, the figure `runs` lists and `run` prints;
- accuracies in % with two decimals; the dataset is "SceneRec" (the course's name), said
  once as "SceneRec (15-scene)";
- epochs are numbered as the job's console prints them: from 0 for the numpy jobs (the
  course's "epoch 0 and 9"), from 1 for tf-quickstart (the tutorial's "Epoch 1..5").
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from jobs import runs

Q6_CONDITIONS = (  # (the course's name, dataset, NN+SVM?, condition names accepted in rows)
    ("NN on MNIST", "mnist", False, ("nn-mnist", "mnist-nn")),
    ("NN+SVM on MNIST", "mnist", True, ("svm-mnist", "mnist-svm")),
    ("NN on SceneRec", "15scene", False, ("nn-scene", "scene-nn")),
    ("NN+SVM on SceneRec", "15scene", True, ("svm-scene", "scene-svm")),
)
SVM_ACC_KEYS = ("svm_test_accuracy",)
SVM_TRAIN_KEYS = ("svm_train_accuracy",)
ACC_KEYS = ("test_accuracy", "accuracy", "test_acc", "val_accuracy")
TRAIN_ACC_KEYS = ("train_accuracy", "train_acc")
LOSS_KEYS = ("loss", "train_loss")
TEST_LOSS_KEYS = ("test_loss", "val_loss")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".svg", ".gif")

DATASET_NAMES = {"mnist": "MNIST", "15scene": "SceneRec", "scene": "SceneRec"}  # one name per dataset
JOB_TITLES = {
    "mnist-nn": "NN on MNIST", "mnist-svm": "NN+SVM on MNIST",
    "scene-nn": "NN on SceneRec (15-scene)", "scene-svm": "NN+SVM on SceneRec (15-scene)",
    "q6": "Q6: NN and NN+SVM on MNIST and on SceneRec (15-scene)",
    "tf-quickstart": "Q7: TensorFlow 2 quickstart for experts, on MNIST",
}
NUMPY_JOBS = ("mnist-nn", "mnist-svm", "scene-nn", "scene-svm", "q6")
EPOCH_FROM_ONE = ("tf-quickstart",)  # jobs whose console counts epochs from 1
MODES = {
    "stencil": "the course template exactly: per-example SGD",
    "minibatch": "vectorised minibatch SGD: fast, not the course's per-example updates",
    "tutorial": "the TensorFlow tutorial's model and training loop",
}
MODE_LINE_KEYS = ("epochs", "lr", "batch_size", "init", "pixels", "svm_epochs", "seed", "train_samples", "test_samples",
                  "train_per_class", "test_per_class", "jit", "deterministic")  # the rest: the Settings table
RUN_ONLY = ("job", "out", "data_dir", "cache_dir", "download", "resume")  # where a run reads and writes


class Bold(str):
    """A table cell shown in bold (the highest value of its column)."""


def _first(row: dict, keys) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def load(run_dir: Path) -> dict:
    def js(name):
        try:
            return json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return None

    metrics = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                metrics.append(row)
    summary = js("summary.json")
    manifest, status = js("manifest.json"), js("status.json")
    return {"manifest": manifest if isinstance(manifest, dict) else {},
            "status": status if isinstance(status, dict) else {},
            "summary": summary if isinstance(summary, dict) else None, "metrics": metrics}


def _condition(row: dict) -> str:
    """The series a metrics row belongs to: `condition`, else the dataset (q6 trains one
    network per dataset), else one unnamed series."""
    return str(row.get("condition") or row.get("dataset") or "")


def series(metrics: list[dict]) -> dict[str, list[dict]]:
    """{series: [rows in epoch order]}."""
    out: dict[str, list[dict]] = {}
    for row in metrics:
        if not _is_num(row.get("epoch")):
            continue
        out.setdefault(_condition(row), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["epoch"])
    if len(out) == 1:  # one series: no need to name it
        out = {"": next(iter(out.values()))}
    return out


def dataset_name(name: str) -> str:
    """The one display name of a dataset or series (15scene -> SceneRec)."""
    return DATASET_NAMES.get(str(name).lower(), str(name))


def _acc_pct(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{100 * v:.2f}%" if v <= 1.0 else f"{v:.2f}%"


def _num(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 100 else f"{v:,.1f}"
    return str(v)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pick(rows: list[dict], acc_keys) -> dict:
    """Highest accuracy over rows (and its epoch); epoch 0 and epoch 9 (else the first and the
    last row); the final row."""
    rows = [r for r in rows if _first(r, acc_keys) is not None]
    empty = {"epoch": None, "loss": None, "accuracy": None}
    if not rows:
        return {"best_accuracy": None, "best_epoch": None, "epoch0": dict(empty), "epoch9": dict(empty), "final": dict(empty)}
    e0 = next((r for r in rows if r.get("epoch") == 0), rows[0])
    e9 = next((r for r in rows if r.get("epoch") == 9), rows[-1])
    as_cell = lambda r: {"epoch": r.get("epoch"), "loss": _first(r, LOSS_KEYS), "accuracy": _first(r, acc_keys)}
    best = max(rows, key=lambda r: _first(r, acc_keys))  # the first of equals: the earliest epoch
    return {"best_accuracy": _first(best, acc_keys), "best_epoch": best.get("epoch"),
            "epoch0": as_cell(e0), "epoch9": as_cell(e9), "final": as_cell(rows[-1])}


def q6_table(metrics: list[dict], summary: dict | None = None) -> list[dict]:
    """The course's Q6 table, one row per condition, from metrics.jsonl.

    The trainer trains one network per dataset; its rows carry `dataset` (mnist, 15scene),
    the epoch's loss and test_accuracy (NN), and on the epochs after which the NN+SVM head
    was fitted, svm_test_accuracy. Rows that name a `condition` instead are read as such.
    Each row: condition, dataset, svm, best_accuracy, best_epoch, epoch0, epoch9, final
    (each {epoch, loss, accuracy}; an NN+SVM row's loss is the network's epoch loss).
    """
    by_dataset: dict[str, list[dict]] = {}
    by_condition: dict[str, list[dict]] = {}
    for r in metrics:
        if not _is_num(r.get("epoch")):
            continue
        if r.get("condition"):
            by_condition.setdefault(str(r["condition"]).lower(), []).append(r)
        elif r.get("dataset"):
            by_dataset.setdefault(str(r["dataset"]), []).append(r)
    for rows in (*by_dataset.values(), *by_condition.values()):
        rows.sort(key=lambda r: r["epoch"])
    out = []
    for label, dataset, svm, names in Q6_CONDITIONS:
        rows = by_dataset.get(dataset) or next((by_condition[n] for n in names if n in by_condition), [])
        keys = SVM_ACC_KEYS if svm and dataset in by_dataset else ACC_KEYS
        out.append({"condition": label, "dataset": dataset, "svm": svm, **_pick(rows, keys)})
    return out


def course_rows(job: str, metrics: list[dict], summary: dict | None = None) -> list[dict] | None:
    """The course's table for this run: q6's four conditions; for a single-condition job the
    conditions its metrics hold (NN, and NN+SVM where the SVM was fitted). None for jobs that
    are not the course's Q6 (tf-quickstart, selftest, a job of the user's)."""
    if job not in NUMPY_JOBS:
        return None
    rows = q6_table(metrics, summary)
    if job == "q6":
        return rows
    return [r for r in rows if r["best_accuracy"] is not None]


def _epoch_base(job: str | None) -> int:
    return 1 if job in EPOCH_FROM_ONE else 0


def _loss_kind(rows: list[dict]) -> str | None:
    kinds = {r.get("loss_kind") for r in rows if r.get("loss_kind")}
    return next(iter(kinds)) if len(kinds) == 1 else None


def _n_train(summary: dict | None, name: str) -> int | None:
    """Training examples of series `name` (a dataset), from summary.json."""
    s = summary or {}
    if isinstance(s.get("datasets"), dict):
        for key, r in s["datasets"].items():
            info = r.get("dataset") if isinstance(r, dict) else None
            if isinstance(info, dict) and (key == name or info.get("name") == name) and _is_num(info.get("n_train")):
                return int(info["n_train"])
    info = s.get("dataset")
    if isinstance(info, dict) and _is_num(info.get("n_train")):
        return int(info["n_train"])
    return None


def loss_label(kind: str | None, n: int | None = None) -> str:
    if kind == "sum":
        return f"sum over the epoch's {n:,} training examples" if n else "sum over the epoch's training examples"
    if kind == "mean":
        return "mean per training example"
    return ""


def figures(metrics: list[dict], job: str | None = None, summary: dict | None = None) -> list[tuple[str, object]]:
    """[("loss", Figure), ("accuracy", Figure)]: one panel per dataset (q6: MNIST and SceneRec
    side by side, each on its own scale: their losses are sums over different numbers of
    examples), each with a title, axis labels, a legend and whole-epoch ticks numbered as the
    job's console numbers epochs."""
    groups = series(metrics)
    if not groups:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    base = _epoch_base(job)
    what = job or "run"
    out = []

    def panels(title):
        n = len(groups)
        fig, axes = plt.subplots(1, n, figsize=(6.4 if n == 1 else 5.4 * n, 4.0), dpi=110, squeeze=False)
        fig.suptitle(title, fontsize=12)
        return fig, list(axes[0])

    def finish(fig, axes, name):
        if not any(ax.get_lines() for ax in axes):
            plt.close(fig)
            return
        for ax in axes:
            ax.set_xlabel("epoch" + (" (as the tutorial prints it, from 1)" if base else ""))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=9, loc="best")
        fig.tight_layout()
        out.append((name, fig))

    def panel_name(cond, rows):  # the dataset, however the run names it, else the job
        info = (summary or {}).get("dataset") if isinstance((summary or {}).get("dataset"), dict) else {}
        return dataset_name(cond or rows[0].get("dataset") or info.get("name") or what)

    thousands = FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}")
    svm = any(_first(r, SVM_ACC_KEYS) is not None for rows in groups.values() for r in rows)
    head = "NN " if svm else ""  # the course's names where NN+SVM is beside it
    fig, axes = panels(f"{what}: training loss per epoch")
    for ax, (cond, rows) in zip(axes, groups.items()):
        for keys, label, style in ((LOSS_KEYS, "train loss", "-o"), (TEST_LOSS_KEYS, "test loss", "--s")):
            pts = [(r["epoch"] + base, _first(r, keys)) for r in rows]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_title(panel_name(cond, rows), fontsize=11)
        detail = loss_label(_loss_kind(rows), _n_train(summary, cond))
        ax.set_ylabel("loss" + (f"\n({detail})" if detail else ""))
        ax.yaxis.set_major_formatter(thousands)
    finish(fig, axes, "loss")

    fig, axes = panels(f"{what}: accuracy per epoch")
    for ax, (cond, rows) in zip(axes, groups.items()):
        lines = ((TRAIN_ACC_KEYS, f"{head}train", {"linestyle": "--", "marker": ".", "alpha": 0.7}),
                 (ACC_KEYS, f"{head}test", {"linestyle": "-", "marker": "o"}),
                 (SVM_TRAIN_KEYS, "NN+SVM train", {"linestyle": "none", "marker": "+", "markersize": 10}),
                 (SVM_ACC_KEYS, "NN+SVM test", {"linestyle": "none", "marker": "X", "markersize": 10}))
        for keys, label, style in lines:
            pts = [(r["epoch"] + base, _first(r, keys)) for r in rows]
            pts = [(e, 100 * v if v <= 1.0 else v) for e, v in pts if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        ax.set_title(panel_name(cond, rows), fontsize=11)
        ax.set_ylabel("accuracy (%)")
    finish(fig, axes, "accuracy")
    return out


def plot(run_dir: Path, metrics: list[dict], job: str | None = None, summary: dict | None = None) -> list[Path]:
    """loss.png and accuracy.png (see `figures`) under run_dir/plots/."""
    made = figures(metrics, job, summary)
    if not made:
        return []
    import matplotlib.pyplot as plt

    (run_dir / "plots").mkdir(exist_ok=True)
    out = []
    for name, fig in made:
        path = run_dir / "plots" / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


TIMELINE_HEADER = ("#", "VM", "zone", "kind", "start (UTC)", "end (UTC)", "duration", "ended by", "resumed from", "cost")


def _when(value) -> str:
    """A record's timestamp as `YYYY-mm-dd HH:MM:SS` (UTC), or — ."""
    from datetime import timezone

    from infra.times import parse_time

    t = parse_time(value)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "—"


def _span(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _money(v) -> str:
    return f"${v:.4f}" if isinstance(v, (int, float)) else "—"


def timeline(status: dict, state: str) -> dict | None:
    """The VMs a run ran on (status.json's `segments`: one per VM, a new one after each
    preemption), one row each, and what they cost against the same time on demand. None for a
    run on one on-demand VM, and for runs from before segments."""
    from infra.times import parse_time

    segs = [x for x in (status.get("segments") or []) if isinstance(x, dict)] if isinstance(status.get("segments"), list) else []
    if not segs or (len(segs) == 1 and not segs[0].get("spot")):
        return None
    rows, costs, on_demand = [], [], []
    for pos, seg in enumerate(segs):
        start = seg.get("vm_started") or seg.get("started")  # billed from the VM's creation when ours
        seconds = seg.get("seconds")
        if not _is_num(seconds):
            a, b = parse_time(start), parse_time(seg.get("ended"))
            seconds = max(0.0, (b - a).total_seconds()) if a and b else None
        ended_by = seg.get("ended_by")
        if not ended_by and not seg.get("ended"):
            ended_by = "(running)" if pos == len(segs) - 1 and state not in runs.FINAL else None
        index = seg.get("index")
        resumed = seg.get("resumed_from")
        if resumed is None:
            resumed = "from scratch" if "resumed_from" in seg and pos > 0 else "—"
        spot = seg.get("spot")
        rows.append([int(index) + 1 if _is_num(index) else pos + 1, seg.get("vm") or "—", seg.get("zone") or "—",
                     "spot" if spot else ("on demand" if spot is not None else "—"), _when(start), _when(seg.get("ended")),
                     _span(seconds), ended_by or "—", str(resumed), _money(seg.get("cost"))])
        if _is_num(seg.get("cost")):
            costs.append(seg["cost"])
            od = seg.get("on_demand_per_hour")
            on_demand.append(od * seconds / 3600 if _is_num(od) and _is_num(seconds) else None)
    n = len(segs)
    intro = f"The run ran on {n} VM{'s' if n != 1 else ''}" + (f" (recovered {n - 1} time{'s' if n != 2 else ''})." if n > 1 else ".")
    out = {"header": list(TIMELINE_HEADER), "rows": rows, "intro": intro, "cost": None, "on_demand": None, "saving_pct": None}
    if not costs:
        out["cost_line"] = "Cost: — (no prices recorded for these VMs)."
        return out
    unpriced = n - len(costs)
    cost = sum(costs)
    line = f"Cost: {'at least ' if unpriced else ''}{_money(cost)} in all"
    if all(x is not None for x in on_demand):  # the same VMs for the same seconds, on demand
        od_cost = sum(on_demand)
        saving = 100 * (1 - cost / od_cost) if od_cost > 0 else None
        out.update(on_demand=od_cost, saving_pct=saving)
        line += f"; the same time on demand: {_money(od_cost)}"
        if saving is not None:
            line += f" (saved {saving:.1f}%)" if saving >= 0 else f" ({-saving:.1f}% more than on demand)"
    else:
        line += "; on-demand price not recorded, no comparison"
    if unpriced:
        line += f"; {unpriced} VM{'s' if unpriced != 1 else ''} without a price not counted"
    out.update(cost=cost, cost_line=line + ".")
    return out




# --------------------------------------------------------------------------- what the run used
JOB_DATASET = {"mnist-nn": "mnist", "mnist-svm": "mnist", "scene-nn": "15scene", "scene-svm": "15scene"}


def _value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v)
    return v if isinstance(v, str) else _num(v)


def _per_dataset(summary: dict | None) -> dict[str, dict]:
    """{display name: that training's part of summary.json}: q6's `datasets`, else the
    summary itself under its dataset's name ("" when it names none)."""
    s = summary or {}
    if isinstance(s.get("datasets"), dict):
        return {dataset_name(k): v for k, v in s["datasets"].items() if isinstance(v, dict)}
    info = s.get("dataset") if isinstance(s.get("dataset"), dict) else {}
    return {dataset_name(info["name"]) if info.get("name") else "": s} if s else {}


def _joined(values: dict[str, str], sep: str = " / ") -> str | None:
    """One value when every dataset used the same, else `MNIST 0.5 / SceneRec 0.005`."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return sep.join(f"{k} {v}" if k else v for k, v in values.items())


def settings(manifest: dict, summary: dict | None) -> list[tuple[str, str, str]]:
    """(setting, value, where the value came from) for every parameter of the job: the value
    given (the job's default or --set), else the value the trainer resolved (its mode's
    default), from summary.json; then the data each training read."""
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    parts = _per_dataset(summary)
    configs = {k: v["config"] for k, v in parts.items() if isinstance(v.get("config"), dict)}
    if not params and isinstance((summary or {}).get("config"), dict):  # the trainer run by hand
        params = {k: v for k, v in summary["config"].items() if k not in RUN_ONLY}
    mode = params.get("mode") or (summary or {}).get("mode")
    rows = []
    for key, given in params.items():
        if given is not None:
            rows.append((key, _value(given), ""))
            continue
        if key == "svm_epochs":
            fits = _joined({k: _value(v["svm"].get("fit_after_epochs")) for k, v in parts.items()
                            if isinstance(v.get("svm"), dict)})
            if fits:
                rows.append((key, fits, "the job's default (0,last)"))
            continue
        resolved = _joined({k: _value(c.get(key)) if c.get(key) is not None else None for k, c in configs.items()})
        if resolved is not None:
            rows.append((key, resolved, f"the default for {mode} mode" if mode else "the trainer's default"))
    for name, part in parts.items():
        info = part.get("dataset") if isinstance(part.get("dataset"), dict) else {}
        if _is_num(info.get("n_train")) and _is_num(info.get("n_test")):
            text = f"{int(info['n_train']):,} train / {int(info['n_test']):,} test examples"
            if info.get("preprocessing"):
                text += f"; {info['preprocessing']}"
            rows.append((f"data: {name}" if name else "data", text, ""))
    return rows


def _device_text(device, gpu, reason) -> str:
    d = str(device)
    text = "CPU" if d.lower() == "cpu" else (f"GPU ({gpu})" if gpu else "GPU") if d.lower() == "gpu" else d
    return text + (f" ({reason})" if reason else "")


def trained_on(summary: dict | None) -> str | None:
    """The device the job trained on, as the trainer recorded it (summary.json's `device`,
    per dataset for q6), with the trainer's reason."""
    texts = {name: _device_text(p["device"], p.get("gpu"), p.get("device_reason"))
             for name, p in _per_dataset(summary).items() if p.get("device")}
    return _joined(texts, "; ")


def _used_gpu(summary: dict | None) -> bool:
    return any(str(p.get("device", "")).lower().startswith("gpu") for p in _per_dataset(summary).values())


def tutorial_lines(run_dir: Path, metrics: list[dict]) -> list[str]:
    """tf-quickstart's per-epoch lines as its console printed them (logs/output.log), else
    rebuilt from metrics.jsonl in the tutorial's format."""
    try:
        log = (run_dir / "logs" / "output.log").read_text(errors="replace").splitlines()
    except OSError:
        log = []
    lines = [x.rstrip() for x in log if re.match(r"Epoch \d+, Loss: ", x)]
    if lines:
        return lines
    return [f"Epoch {int(r['epoch']) + 1}, Loss: {_first(r, LOSS_KEYS)}, Accuracy: {100 * (_first(r, TRAIN_ACC_KEYS) or 0)}, "
            f"Test Loss: {_first(r, TEST_LOSS_KEYS)}, Test Accuracy: {100 * (_first(r, ACC_KEYS) or 0)}"
            for r in metrics if _is_num(r.get("epoch"))]


# --------------------------------------------------------------------------- the answer
def _same(values):
    values = [v for v in values if v is not None]
    return values[0] if values and all(v == values[0] for v in values) else None


def headline(job: str, course: list[dict] | None, groups: dict[str, list[dict]], best: float | None) -> dict:
    """The answer at a glance: the final test accuracy and the best, each labelled with its
    head and epoch. `best` is the run's one best figure (trainer/report.py's rule)."""
    base = _epoch_base(job)
    epoch = lambda e: "—" if e is None else str(int(e) + base)
    if course:
        multi = len({r["dataset"] for r in course}) > 1
        short = lambda r: r["condition"] if multi else r["condition"].split(" on ")[0]
        last = _same([r["final"]["epoch"] for r in course if not r["svm"]])
        finals = []
        for r in course:
            note = ""
            if r["final"]["epoch"] is not None and r["final"]["epoch"] != last:
                note = f" (fit after epoch {epoch(r['final']['epoch'])})" if r["svm"] else f" (epoch {epoch(r['final']['epoch'])})"
            finals.append((short(r), _acc_pct(r["final"]["accuracy"]) + note))
        final_label = f"epoch {epoch(last)}, the last" if last is not None else "the last epoch"
        top = next((r for r in course if r["best_accuracy"] is not None and best is not None
                    and abs(r["best_accuracy"] - best) < 1e-9), None)
        best_note = ""
        if top:
            where = f"fit after epoch {epoch(top['best_epoch'])}" if top["svm"] else f"epoch {epoch(top['best_epoch'])}"
            best_note = f"{short(top)}, {where}"
            others = [r for r in course if r is not top and r["best_accuracy"] is not None]
            if not multi and others:
                o = others[0]
                best_note += (f"; {short(o)}: {_acc_pct(o['best_accuracy'])}, "
                              f"{'fit after epoch' if o['svm'] else 'epoch'} {epoch(o['best_epoch'])}")
        return {"final_label": final_label, "finals": finals, "best": best, "best_note": best_note}
    rows = next(iter(groups.values()), []) if len(groups) == 1 else []
    rows = [r for r in rows if _first(r, ACC_KEYS) is not None]
    if not rows:
        return {"final_label": "the last epoch", "finals": [("", "—")], "best": best, "best_note": ""}
    top = max(rows, key=lambda r: _first(r, ACC_KEYS))
    note = f"epoch {epoch(top['epoch'])}" if best is not None and abs(_first(top, ACC_KEYS) - best) < 1e-9 else ""
    return {"final_label": f"epoch {epoch(rows[-1]['epoch'])}, the last", "finals": [("", _acc_pct(_first(rows[-1], ACC_KEYS)))],
            "best": best, "best_note": note}


def _epoch_head(rows: list[dict], key: str, base: int, fallback: str) -> str:
    e = _same([r[key]["epoch"] for r in rows])
    return f"epoch {int(e) + base}" if e is not None else fallback


def course_header(rows: list[dict]) -> list[str]:
    a = _epoch_head(rows, "epoch0", 0, "first epoch")
    b = _epoch_head(rows, "epoch9", 0, "last epoch")
    return ["condition", "highest test accuracy", f"{a} loss (network)", f"{a} accuracy", f"{b} loss (network)", f"{b} accuracy"]


def course_cells(rows: list[dict]) -> list[list[str]]:
    a = _same([r["epoch0"]["epoch"] for r in rows])
    b = _same([r["epoch9"]["epoch"] for r in rows])

    def loss(cell, common):
        text = _num(cell["loss"])
        return text if common is not None or cell["epoch"] is None else f"{text} (epoch {cell['epoch']})"

    return [[r["condition"],
             _acc_pct(r["best_accuracy"]) + (f" (epoch {r['best_epoch']})" if r["best_epoch"] is not None else ""),
             loss(r["epoch0"], a), _acc_pct(r["epoch0"]["accuracy"]), loss(r["epoch9"], b), _acc_pct(r["epoch9"]["accuracy"])]
            for r in rows]


def q6_text(rows: list[dict]) -> list[str]:
    """The table in the course's own shape."""
    lines = []
    for r in rows:
        lines.append(f"{r['condition']}: {_acc_pct(r['best_accuracy'])} (highest accuracy)")
        for key in ("epoch0", "epoch9"):
            e = r[key]
            lines.append(f"  Epoch {e['epoch'] if e['epoch'] is not None else '—'} loss: {_num(e['loss'])} Accuracy: {_acc_pct(e['accuracy'])}")
    return lines


def course_notes(course: list[dict], metrics: list[dict], summary: dict | None) -> list[str]:
    """What the table's figures are, said under it."""
    loss_defs = _joined({name: (p.get("mode_detail") or {}).get("loss") for name, p in _per_dataset(summary).items()
                         if isinstance(p.get("mode_detail"), dict)}, "; ")
    if not loss_defs:
        kinds = {r.get("loss_kind") for r in metrics if r.get("loss_kind")}
        loss_defs = loss_label(next(iter(kinds))) if len(kinds) == 1 else ""
    notes = [f"Loss: the network's training loss over the epoch{f' ({loss_defs})' if loss_defs else ''}."]
    svm_rows = [r for r in course if r["svm"] and r["best_accuracy"] is not None]
    if svm_rows:
        hinge = {}
        for r in svm_rows:
            fits = [m for m in metrics if str(m.get("dataset")) == r["dataset"] and _is_num(m.get("svm_squared_hinge"))]
            if fits:
                hinge[dataset_name(r["dataset"])] = ", ".join(f"{m['svm_squared_hinge']:.4g} after epoch {m['epoch']}" for m in fits)
        text = ("NN+SVM rows: a linear SVM (LinearSVC, C=1) fitted on the training logits of the same network after "
                "that epoch; the loss shown is the network's epoch loss, not the SVM's")
        if hinge:
            multi = len(hinge) > 1
            text += " (the SVM's squared hinge: " + "; ".join(f"{k} {v}" if multi else v for k, v in hinge.items()) + ")"
        notes.append(text + ".")
        notes.append("Highest test accuracy: over every epoch for NN, over the SVM's fits for NN+SVM.")
    else:
        notes.append("Highest test accuracy: over every epoch. NN+SVM was not fitted in this run (--set svm_epochs=0,last fits it).")
    return notes


def epochs_table(job: str, groups: dict[str, list[dict]]) -> dict | None:
    """The epochs table: NN and NN+SVM columns; blank NN+SVM cells on epochs without a fit;
    each series' highest test accuracy in bold."""
    everything = [r for rows in groups.values() for r in rows]
    if not everything:
        return None
    base = _epoch_base(job)
    multi = len(groups) > 1
    has = lambda keys: any(_first(r, keys) is not None for r in everything)
    svm = has(SVM_ACC_KEYS)
    kinds = {r.get("loss_kind") for r in everything if r.get("loss_kind")}
    kind = next(iter(kinds)) if len(kinds) == 1 else None
    cols = [("epoch", None)]
    if has(LOSS_KEYS):
        cols.append((f"train loss ({kind})" if kind else "train loss", LOSS_KEYS))
    if has(TEST_LOSS_KEYS):
        cols.append(("test loss", TEST_LOSS_KEYS))
    if has(TRAIN_ACC_KEYS):
        cols.append(("NN train" if svm else "train accuracy", TRAIN_ACC_KEYS))
    if has(ACC_KEYS):
        cols.append(("NN test" if svm else "test accuracy", ACC_KEYS))
    if svm:
        if has(SVM_TRAIN_KEYS):
            cols.append(("NN+SVM train", SVM_TRAIN_KEYS))
        cols.append(("NN+SVM test", SVM_ACC_KEYS))
    if has(("seconds",)):
        cols.append(("epoch time", ("seconds",)))
    header = (["dataset"] if multi else []) + [c[0] for c in cols]
    rows = []
    for cond, group in groups.items():
        tops = {}
        for keys in (ACC_KEYS, SVM_ACC_KEYS):
            vals = [_first(r, keys) for r in group if _first(r, keys) is not None]
            tops[keys] = max(vals) if vals else None
        for r in group:
            cells = [dataset_name(cond)] if multi else []
            for name, keys in cols:
                if keys is None:
                    cells.append(str(int(r["epoch"]) + base))
                    continue
                v = _first(r, keys)
                if keys in (SVM_ACC_KEYS, SVM_TRAIN_KEYS) and v is None:
                    cells.append("")  # no SVM fit after this epoch
                elif keys == ("seconds",):
                    cells.append(f"{v:.2f} s" if v is not None else "—")
                elif keys in (LOSS_KEYS, TEST_LOSS_KEYS):
                    cells.append(_num(v))
                else:
                    text = _acc_pct(v)
                    cells.append(Bold(text) if v is not None and keys in tops and v == tops[keys] else text)
            rows.append(cells)
    notes = ["Bold: the highest test accuracy" + (" of each head" if svm else "") + (" per dataset" if multi else "") + "."]
    if svm:
        fitted = sorted({int(r["epoch"]) + base for r in everything if _first(r, SVM_ACC_KEYS) is not None})
        notes.append(f"NN+SVM: fitted after epoch{'s' if len(fitted) != 1 else ''} {', '.join(map(str, fitted))} only "
                     "(blank: no fit after that epoch).")
    if base:
        notes.append("Epochs count from 1, as the tutorial's output prints them (metrics.jsonl counts from 0).")
    right = [i for i, h in enumerate(header) if h not in ("dataset",)]
    return {"header": header, "rows": rows, "right": right, "notes": notes}


# --------------------------------------------------------------------------- the report
def build(run_dir: Path) -> dict:
    """Everything the report shows, as plain data (Markdown and HTML render from this)."""
    d = load(run_dir)
    m, st, summary, metrics = d["manifest"], d["status"], d["summary"], d["metrics"]
    job = str(m.get("job") or (summary or {}).get("job") or "run")
    state = runs.effective_state(st) if st else "unknown"
    dur = runs.duration_s(st, m)
    price = m.get("price_per_hour")
    cost = price * dur / 3600 if isinstance(price, (int, float)) and dur is not None else m.get("cost_estimate")
    segs = st.get("segments") if isinstance(st.get("segments"), list) else []
    seg_costs = [x.get("cost") for x in segs if isinstance(x, dict)]
    if len(segs) > 1 and seg_costs and all(_is_num(c) for c in seg_costs):
        cost = sum(seg_costs)  # every VM the run ran on, not the last one's price over the whole run
    if job in JOB_DATASET:  # rows without a dataset: the job's
        metrics = [r if r.get("dataset") or r.get("condition") else {**r, "dataset": JOB_DATASET[job]} for r in metrics]
    vm_gpu = st.get("gpu") or m.get("gpu")
    device = trained_on(summary)
    if device is None:
        device_line = "not recorded (no summary.json: the job has not finished)" if not summary else "not recorded by this job"
    else:
        device_line = device
        if vm_gpu and not _used_gpu(summary):
            device_line += f"; the VM's GPU ({str(vm_gpu).upper()}) was not used"
    libs = (summary or {}).get("libraries") if isinstance((summary or {}).get("libraries"), dict) else {}
    hw = (summary or {}).get("hardware") if isinstance((summary or {}).get("hardware"), dict) else {}
    facts = [
        ("run", m.get("run_id") or run_dir.name),
        ("job", job),
        ("state", state + (f" (exit code {st.get('exit_code')})" if st.get("exit_code") not in (None, 0) else "")),
        ("started", st.get("started") or m.get("created") or "—"),
        ("duration", _span(dur) if dur is not None else "—"),
        ("VM", f"{m.get('vm', '—')} in {m.get('zone', '—')} ({m.get('machine_type') or '—'})"),
        ("VM's GPU", str(vm_gpu).upper() if vm_gpu else "none"),
        ("trained on", device_line),
        ("template", m.get("template", "—")),
        ("code", m.get("code_hash", "—")),
        ("cost estimate", f"${cost:.4f}" if isinstance(cost, (int, float)) else "—"),
        ("ferry", m.get("ferry_version", "—")),
    ]
    if libs:
        facts.append(("libraries", ", ".join(f"{k} {v}" for k, v in libs.items())))
    if hw.get("cpu"):
        facts.append(("CPU", f"{hw['cpu']}, {hw.get('cores', '?')} cores" + (f", {hw['memory_gib']} GiB" if hw.get("memory_gib") else "")))
    groups = series(metrics)
    course = course_rows(job, metrics, summary)
    best = runs.best_accuracy(summary, metrics)
    params = settings(m, summary)
    mode = (m.get("params") or {}).get("mode") or (summary or {}).get("mode")
    images = []
    art = run_dir / "artifacts"
    if art.is_dir():
        images = sorted(p.relative_to(run_dir).as_posix() for p in art.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return {
        "title": f"{job}: {JOB_TITLES.get(job, m.get('run_id') or run_dir.name)}",
        "run_id": m.get("run_id") or run_dir.name,
        "job": job,
        "state": state,
        "duration": _span(dur) if dur is not None else None,
        "cost": cost if isinstance(cost, (int, float)) else None,
        "facts": facts,
        "params": params,
        "best": best,
        "headline": headline(job, course, groups, best),
        "trained_on": device_line,
        "summary": summary or {},
        "epochs": epochs_table(job, groups),
        "course": course,
        "course_notes": course_notes(course, metrics, summary) if course else [],
        "q6": course,
        "tutorial": tutorial_lines(run_dir, metrics) if job == "tf-quickstart" and metrics else None,
        "mode": mode,
        "message": st.get("message"),
        "images": images,
        "timeline": timeline(st, state),
        "metrics": metrics,
    }


def _cell_md(c) -> str:
    text = str(c).replace("|", "\\|")
    return f"**{text}**" if isinstance(c, Bold) and text else text


def _md_table(header, rows, right=()) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if i in right else "---|" for i in range(len(header)))]
    out += ["| " + " | ".join(_cell_md(c) for c in r) + " |" for r in rows]
    return out


def _html_table(header, rows, right=()) -> str:
    def cell(tag, i, c):
        text = html.escape(str(c))
        if isinstance(c, Bold) and text:
            text = f"<b>{text}</b>"
        return f'<{tag} class="n">{text}</{tag}>' if i in right else f"<{tag}>{text}</{tag}>"

    h = "".join(cell("th", i, c) for i, c in enumerate(header))
    b = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    head = f"<thead><tr>{h}</tr></thead>" if any(str(c) for c in header) else ""  # a table of facts: no header row
    return f"<table>{head}<tbody>{b}</tbody></table>"


def _mode_line(data: dict) -> str | None:
    """`Mode: `stencil` (what it is); settings: ...`, plain text with the mode in backticks."""
    used = "; ".join(f"{k} {v}" for k, v, _ in data["params"] if k in MODE_LINE_KEYS)
    if not data["mode"] and not used:
        return None
    mode = data["mode"] or "default"
    what = MODES.get(str(mode))
    return f"Mode: `{mode}`" + (f" ({what})" if what else "") + (f"; settings: {used}." if used else ".")


def _answer_items(data: dict) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The answer's lines, each a list of (text, bold) pieces, for both renderers."""
    h = data["headline"]
    finals = []
    for i, (name, value) in enumerate(h["finals"]):
        if i:
            finals.append((" · ", False))
        finals.append(((f"{name} " if name else "") + value, True))
    items = [("final", [(f"Final test accuracy ({h['final_label']}): ", False), *finals])]
    best = [("Best test accuracy (the highest over the epochs): ", False), (_acc_pct(h["best"]), True)]
    if h["best_note"]:
        best.append((f" ({h['best_note']})", False))
    items.append(("best", best))
    items.append(("device", [("Trained on: ", False), (data["trained_on"], False)]))
    mode = _mode_line(data)
    if mode:
        items.append(("mode", [(mode, False)]))
    run = f"Run: {data['state']}" if data["state"] != "unknown" else "Run: state unknown (no status.json)"
    if data["duration"]:
        run += f" in {data['duration']}"
    if data["cost"] is not None:
        run += f", cost ≈ ${data['cost']:.4f}"
    items.append(("run", [(run + ".", False)]))
    return items


FOOTER_MD = "Everything the job recorded: `summary.json`, `metrics.jsonl` (one line per epoch); its full output: `logs/output.log`."


def markdown(data: dict, plots: list[Path], run_dir: Path) -> str:
    out = [f"# {data['title']}", "", f"Run `{data['run_id']}`.", ""]
    if data["message"]:
        out += [f"> {data['message']}", ""]
    out += ["## Answer", ""]
    for _, pieces in _answer_items(data):
        out.append("- " + "".join(f"**{t}**" if b else t for t, b in pieces))
    out.append("")
    if data["course"]:
        out += ["## Q6: the course's table", ""]
        out += _md_table(course_header(data["course"]), course_cells(data["course"]), right=range(1, 6)) + [""]
        out += ["In the course's shape:", "", "```"] + q6_text(data["course"]) + ["```", ""]
        out += [f"- {n}" for n in data["course_notes"]] + [""]
    if data["tutorial"]:
        out += ["## Q7: the tutorial's output", "", "```"] + data["tutorial"] + ["```", "",
                "The tutorial reports about 98% test accuracy after 5 epochs on all of MNIST (60,000 train / 10,000 test).", ""]
    ep = data["epochs"]
    if ep:
        out += ["## Epochs", ""] + _md_table(ep["header"], ep["rows"], ep["right"]) + [""]
        out += [f"- {n}" for n in ep["notes"]] + [""]
    if plots:
        out += ["## Plots", ""]
        for p in plots:
            out += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})", ""]
    if data["images"]:
        out += ["## Figures", ""] + [f"![{Path(i).stem}]({i})" for i in data["images"]] + [""]
    if data["params"]:
        out += ["## Settings", ""] + _md_table(["setting", "value", "note"], [list(p) for p in data["params"]]) + [""]
    tl = data.get("timeline")
    if tl:
        out += ["## Timeline", "", tl["intro"], ""] + _md_table(tl["header"], tl["rows"]) + ["", f"**{tl['cost_line']}**", ""]
    out += ["## Run", ""] + _md_table(["", ""], data["facts"]) + [""]
    out += [FOOTER_MD, ""]
    return "\n".join(out)


STYLE = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;max-width:62rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.55rem;margin:0 0 .2rem}h2{font-size:1.2rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #ddd;padding-bottom:.15rem}
.sub{color:#555;margin:0 0 1rem}
.answer{border:2px solid #2b7a4b;border-radius:6px;background:#f2f9f4;padding:.6rem 1rem;margin:.5rem 0 1rem}
.answer ul{margin:0;padding-left:1.1rem}.answer li{margin:.2rem 0}
.answer li.final,.answer li.best{font-size:1.1rem}
blockquote{border-left:4px solid #c33;margin:1rem 0;padding:.3rem .8rem;background:#fdf3f3;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5rem 0 .6rem;max-width:100%}
td,th{border:1px solid #ccc;padding:.22rem .5rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f4f4f4}td:first-child{white-space:nowrap}
.n{text-align:right;font-variant-numeric:tabular-nums}td.n{white-space:nowrap}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;border-radius:4px;padding:.5rem .8rem;font-size:.9em}
code{font-size:.92em}
ul.notes{color:#444;font-size:.92em;margin:.2rem 0 .8rem}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
@page{margin:14mm}
@media print{body{max-width:none;margin:0;padding:0;font-size:10pt}
 h2{break-after:avoid}tr,pre,img,.answer,.keep{break-inside:avoid}thead{display:table-header-group}img{max-height:105mm;width:auto}
 .answer{background:none}th{background:none}}
"""


def html_page(data: dict, plots: list[Path], run_dir: Path) -> str:
    e = html.escape
    parts = [f"<h1>{e(data['title'])}</h1>", f'<p class="sub">Run <code>{e(data["run_id"])}</code>.</p>']
    if data["message"]:
        parts.append(f"<blockquote>{e(data['message'])}</blockquote>")

    def inline(text):  # `code` in a plain-text line
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", e(text))

    items = "".join(f'<li class="{k}">' + "".join(f"<b>{e(t)}</b>" if b else inline(t) for t, b in pieces) + "</li>"
                    for k, pieces in _answer_items(data))
    parts += ["<h2>Answer</h2>", f'<section class="answer"><ul>{items}</ul></section>']

    def notes(lines):
        return '<ul class="notes">' + "".join(f"<li>{inline(n)}</li>" for n in lines) + "</ul>" if lines else ""

    if data["course"]:
        parts += ["<h2>Q6: the course's table</h2>",
                  _html_table(course_header(data["course"]), course_cells(data["course"]), right=range(1, 6)),
                  '<div class="keep"><p>In the course\'s shape:</p><pre>' + e("\n".join(q6_text(data["course"]))) + "</pre></div>",
                  notes(data["course_notes"])]
    if data["tutorial"]:
        parts += ["<h2>Q7: the tutorial's output</h2>", "<pre>" + e("\n".join(data["tutorial"])) + "</pre>",
                  "<p>The tutorial reports about 98% test accuracy after 5 epochs on all of MNIST (60,000 train / 10,000 test).</p>"]
    ep = data["epochs"]
    if ep:
        parts += ["<h2>Epochs</h2>", _html_table(ep["header"], ep["rows"], ep["right"]), notes(ep["notes"])]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{e(p.relative_to(run_dir).as_posix())}" alt="{e(p.stem)}">' for p in plots]
    if data["images"]:
        parts.append("<h2>Figures</h2>")
        parts += [f'<img src="{e(i)}" alt="{e(Path(i).stem)}">' for i in data["images"]]
    if data["params"]:
        parts += ["<h2>Settings</h2>", _html_table(["setting", "value", "note"], [list(p) for p in data["params"]])]
    tl = data.get("timeline")
    if tl:
        parts += ["<h2>Timeline</h2>", f"<p>{e(tl['intro'])}</p>", _html_table(tl["header"], tl["rows"]),
                  f"<p><b>{e(tl['cost_line'])}</b></p>"]
    parts += ["<h2>Run</h2>", _html_table(["", ""], data["facts"]),
              f"<p>{inline(FOOTER_MD)}</p>"]
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(data['title'])}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def render(run_dir: Path) -> dict:
    """Write report.md, report.html and plots/ into run_dir; returns their paths."""
    run_dir = Path(run_dir)
    data = build(run_dir)
    plots = plot(run_dir, data["metrics"], data["job"], data["summary"])
    md = run_dir / "report.md"
    md.write_text(markdown(data, plots, run_dir))
    page = run_dir / "report.html"
    page.write_text(html_page(data, plots, run_dir))
    return {"markdown": md, "html": page, "plots": plots, "data": data}
