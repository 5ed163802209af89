"""A pulled run folder -> report.md, report.html and loss/accuracy plots (PNG).

Reads what the run left in the bucket: manifest.json, status.json, metrics.jsonl (one JSON
object per epoch; rows may carry a `condition`, as q6's do), summary.json, artifacts/.
For q6 the report carries the course's table: per condition the highest test accuracy and
the loss and accuracy at epoch 0 and at epoch 9 (the last epoch when fewer were run).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from jobs import runs

Q6_CONDITIONS = (  # (the course's name, dataset, NN+SVM?, condition names accepted in rows)
    ("NN on MNIST", "mnist", False, ("nn-mnist", "mnist-nn")),
    ("NN+SVM on MNIST", "mnist", True, ("svm-mnist", "mnist-svm")),
    ("NN on SceneRec", "15scene", False, ("nn-scene", "scene-nn")),
    ("NN+SVM on SceneRec", "15scene", True, ("svm-scene", "scene-svm")),
)
SVM_ACC_KEYS = ("svm_test_accuracy",)
ACC_KEYS = ("test_accuracy", "accuracy", "test_acc", "val_accuracy")
LOSS_KEYS = ("loss", "train_loss")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".svg", ".gif")


def _first(row: dict, keys) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)):
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
    return {"manifest": js("manifest.json") or {}, "status": js("status.json") or {},
            "summary": js("summary.json"), "metrics": metrics}


def _condition(row: dict) -> str:
    """The series a metrics row belongs to: `condition`, else the dataset (q6 trains one
    network per dataset), else one unnamed series."""
    return str(row.get("condition") or row.get("dataset") or "")


def series(metrics: list[dict]) -> dict[str, list[dict]]:
    """{series: [rows in epoch order]}."""
    out: dict[str, list[dict]] = {}
    for row in metrics:
        if "epoch" not in row:
            continue
        out.setdefault(_condition(row), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["epoch"])
    if len(out) == 1:  # one series: no need to name it
        out = {"": next(iter(out.values()))}
    return out


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


def _pick(rows: list[dict], acc_keys) -> dict:
    """Highest accuracy over rows; epoch 0 and epoch 9 (else the first and the last row)."""
    rows = [r for r in rows if _first(r, acc_keys) is not None]
    if not rows:
        return {"best_accuracy": None, "epoch0": {"epoch": None, "loss": None, "accuracy": None},
                "epoch9": {"epoch": None, "loss": None, "accuracy": None}}
    e0 = next((r for r in rows if r.get("epoch") == 0), rows[0])
    e9 = next((r for r in rows if r.get("epoch") == 9), rows[-1])
    as_cell = lambda r: {"epoch": r.get("epoch"), "loss": _first(r, LOSS_KEYS), "accuracy": _first(r, acc_keys)}  # noqa: E731
    return {"best_accuracy": max(_first(r, acc_keys) for r in rows), "epoch0": as_cell(e0), "epoch9": as_cell(e9)}


def q6_table(metrics: list[dict], summary: dict | None = None) -> list[dict]:
    """The course's Q6 table, one row per condition, from metrics.jsonl.

    The trainer trains one network per dataset; its rows carry `dataset` (mnist, 15scene),
    the epoch's loss and test_accuracy (NN), and on the epochs after which the NN+SVM head
    was fitted, svm_test_accuracy. Rows that name a `condition` instead are read as such.
    """
    by_dataset: dict[str, list[dict]] = {}
    by_condition: dict[str, list[dict]] = {}
    for r in metrics:
        if "epoch" not in r:
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
        out.append({"condition": label, **_pick(rows, keys)})
    return out


def plot(run_dir: Path, metrics: list[dict]) -> list[Path]:
    """loss.png and accuracy.png (per condition) under run_dir/plots/."""
    groups = series(metrics)
    if not groups:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    (run_dir / "plots").mkdir(exist_ok=True)
    for name, keys, ylabel in (("loss", LOSS_KEYS, "loss"), ("accuracy", ACC_KEYS, "test accuracy")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        drawn = False
        for cond, rows in groups.items():
            pts = [(r["epoch"], _first(r, keys)) for r in rows]
            pts = [(e, v) for e, v in pts if v is not None]
            if not pts:
                continue
            if name == "accuracy":
                pts = [(e, 100 * v if v <= 1.0 else v) for e, v in pts]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=(f"NN {cond}" if cond else "NN"))
            drawn = True
            svm = [(r["epoch"], _first(r, SVM_ACC_KEYS)) for r in rows] if name == "accuracy" else []
            svm = [(e, 100 * v) for e, v in svm if v is not None]
            if svm:
                ax.plot([p[0] for p in svm], [p[1] for p in svm], marker="x", linestyle="none", markersize=9,
                        label=f"NN+SVM {cond}".strip())
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel + (" (%)" if name == "accuracy" else ""))
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend()
        if name == "loss" and len(groups) > 1:
            ax.set_yscale("log")
        fig.tight_layout()
        path = run_dir / "plots" / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


def _settings_lines(manifest: dict) -> list[tuple[str, str]]:
    params = manifest.get("params") or {}
    return [(k, _num(v) if not isinstance(v, str) else v) for k, v in params.items() if v is not None]


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


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def build(run_dir: Path) -> dict:
    """Everything the report shows, as plain data (Markdown and HTML render from this)."""
    d = load(run_dir)
    m, st, summary, metrics = d["manifest"], d["status"], d["summary"], d["metrics"]
    state = runs.effective_state(st) if st else "unknown"
    dur = runs.duration_s(st, m)
    price = m.get("price_per_hour")
    cost = price * dur / 3600 if isinstance(price, (int, float)) and dur is not None else m.get("cost_estimate")
    segs = st.get("segments") if isinstance(st.get("segments"), list) else []
    seg_costs = [x.get("cost") for x in segs if isinstance(x, dict)]
    if len(segs) > 1 and seg_costs and all(_is_num(c) for c in seg_costs):
        cost = sum(seg_costs)  # every VM the run ran on, not the last one's price over the whole run
    facts = [
        ("run", m.get("run_id") or run_dir.name),
        ("job", m.get("job", "?")),
        ("state", state + (f" (exit code {st.get('exit_code')})" if st.get("exit_code") not in (None, 0) else "")),
        ("started", st.get("started") or m.get("created") or "—"),
        ("duration", f"{dur:.1f} s" if dur is not None else "—"),
        ("VM", f"{m.get('vm', '—')} in {m.get('zone', '—')} ({m.get('machine_type') or '—'})"),
        ("GPU", str(st.get("gpu") or m.get("gpu") or "none")),
        ("template", m.get("template", "—")),
        ("code", m.get("code_hash", "—")),
        ("cost estimate", f"${cost:.4f}" if isinstance(cost, (int, float)) else "—"),
        ("ferry", m.get("ferry_version", "—")),
    ]
    groups = series(metrics)
    epochs = []
    for cond, rows in groups.items():
        for r in rows:
            epochs.append((cond, r.get("epoch"), _first(r, LOSS_KEYS), _first(r, ACC_KEYS), _first(r, ("train_accuracy", "train_acc"))))
    images = []
    art = run_dir / "artifacts"
    if art.is_dir():
        images = sorted(p.relative_to(run_dir).as_posix() for p in art.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return {
        "title": f"{m.get('job', 'run')}: {m.get('run_id') or run_dir.name}",
        "facts": facts,
        "params": _settings_lines(m),
        "best": runs.best_accuracy(summary, metrics),
        "summary": summary or {},
        "epochs": epochs,
        "q6": q6_table(metrics, summary) if m.get("job") == "q6" else None,
        "mode": (m.get("params") or {}).get("mode"),
        "message": st.get("message"),
        "images": images,
        "timeline": timeline(st, state),
    }


def _md_table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def q6_text(rows: list[dict]) -> list[str]:
    """The table in the course's own shape."""
    lines = []
    for r in rows:
        lines.append(f"{r['condition']}: {_acc_pct(r['best_accuracy'])} (highest accuracy)")
        for key in ("epoch0", "epoch9"):
            e = r[key]
            lines.append(f"  Epoch {e['epoch'] if e['epoch'] is not None else '—'} loss: {_num(e['loss'])} Accuracy: {_acc_pct(e['accuracy'])}")
    return lines


def markdown(data: dict, plots: list[Path], run_dir: Path) -> str:
    out = [f"# {data['title']}", ""]
    out += _md_table(["", ""], data["facts"]) + [""]
    if data["message"]:
        out += [f"> {data['message']}", ""]
    out += [f"**Best test accuracy:** {_acc_pct(data['best'])}", ""]
    if data["params"]:
        out += ["## Settings", ""] + _md_table(["parameter", "value"], data["params"]) + [""]
    tl = data.get("timeline")
    if tl:
        out += ["## Timeline", "", tl["intro"], ""] + _md_table(tl["header"], tl["rows"]) + ["", f"**{tl['cost_line']}**", ""]
    if data["q6"] is not None:
        out += ["## Q6: the course's table", ""]
        out += [f"Mode: `{data['mode'] or 'default'}`; settings: " + ", ".join(f"{k}={v}" for k, v in data["params"]) + ".", ""]
        out += _md_table(
            ["condition", "highest accuracy", "epoch 0 loss", "epoch 0 accuracy", "epoch 9 loss", "epoch 9 accuracy"],
            [[r["condition"], _acc_pct(r["best_accuracy"]), _num(r["epoch0"]["loss"]), _acc_pct(r["epoch0"]["accuracy"]),
              _num(r["epoch9"]["loss"]), _acc_pct(r["epoch9"]["accuracy"])] for r in data["q6"]],
        ) + [""]
        out += ["```"] + q6_text(data["q6"]) + ["```", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in plots] + [""]
    if data["images"]:
        out += ["## Figures", ""] + [f"![{Path(i).stem}]({i})" for i in data["images"]] + [""]
    if data["epochs"]:
        multi = any(e[0] for e in data["epochs"])
        header = (["condition"] if multi else []) + ["epoch", "loss", "test accuracy", "train accuracy"]
        rows = [([c] if multi else []) + [ep, _num(loss), _acc_pct(acc), _acc_pct(tr)] for c, ep, loss, acc, tr in data["epochs"]]
        out += ["## Epochs", ""] + _md_table(header, rows) + [""]
    if data["summary"]:
        out += ["## Summary (summary.json)", "", "```json", json.dumps(data["summary"], indent=2, sort_keys=True), "```", ""]
    out += ["The job's full output is in `logs/output.log`.", ""]
    return "\n".join(out)


def _html_table(header, rows) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def html_page(data: dict, plots: list[Path], run_dir: Path) -> str:
    e = html.escape
    parts = [f"<h1>{e(data['title'])}</h1>", _html_table(["", ""], data["facts"])]
    if data["message"]:
        parts.append(f"<blockquote>{e(data['message'])}</blockquote>")
    parts.append(f"<p><b>Best test accuracy:</b> {e(_acc_pct(data['best']))}</p>")
    if data["params"]:
        parts += ["<h2>Settings</h2>", _html_table(["parameter", "value"], data["params"])]
    tl = data.get("timeline")
    if tl:
        parts += ["<h2>Timeline</h2>", f"<p>{e(tl['intro'])}</p>", _html_table(tl["header"], tl["rows"]),
                  f"<p><b>{e(tl['cost_line'])}</b></p>"]
    if data["q6"] is not None:
        parts += ["<h2>Q6: the course's table</h2>",
                  f"<p>Mode: <code>{e(str(data['mode'] or 'default'))}</code>; settings: {e(', '.join(f'{k}={v}' for k, v in data['params']))}.</p>",
                  _html_table(["condition", "highest accuracy", "epoch 0 loss", "epoch 0 accuracy", "epoch 9 loss", "epoch 9 accuracy"],
                              [[r["condition"], _acc_pct(r["best_accuracy"]), _num(r["epoch0"]["loss"]), _acc_pct(r["epoch0"]["accuracy"]),
                                _num(r["epoch9"]["loss"]), _acc_pct(r["epoch9"]["accuracy"])] for r in data["q6"]]),
                  "<pre>" + e("\n".join(q6_text(data["q6"]))) + "</pre>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{e(p.relative_to(run_dir).as_posix())}" alt="{e(p.stem)}">' for p in plots]
    if data["images"]:
        parts.append("<h2>Figures</h2>")
        parts += [f'<img src="{e(i)}" alt="{e(Path(i).stem)}">' for i in data["images"]]
    if data["epochs"]:
        multi = any(x[0] for x in data["epochs"])
        header = (["condition"] if multi else []) + ["epoch", "loss", "test accuracy", "train accuracy"]
        rows = [([c] if multi else []) + [ep, _num(loss), _acc_pct(acc), _acc_pct(tr)] for c, ep, loss, acc, tr in data["epochs"]]
        parts += ["<h2>Epochs</h2>", _html_table(header, rows)]
    if data["summary"]:
        parts += ["<h2>Summary</h2>", "<pre>" + e(json.dumps(data["summary"], indent=2, sort_keys=True)) + "</pre>"]
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
             "img{max-width:100%;display:block;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{e(data['title'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def render(run_dir: Path) -> dict:
    """Write report.md, report.html and plots/ into run_dir; returns their paths."""
    run_dir = Path(run_dir)
    data = build(run_dir)
    plots = plot(run_dir, load(run_dir)["metrics"])
    md = run_dir / "report.md"
    md.write_text(markdown(data, plots, run_dir))
    page = run_dir / "report.html"
    page.write_text(html_page(data, plots, run_dir))
    return {"markdown": md, "html": page, "plots": plots, "data": data}
