"""A run's report leads with the course's answer: jobs/report.py on run folders shaped
exactly as the trainer and the runner leave them (the scene-svm figures are those of a real
stencil run on the local backend), plus one run of the real trainer where the data is here,
and the HTML measured in headless Chromium where it is installed."""

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jobs import report
from jobs import runs as records
from trainer import report as trainer_report

REPO = Path(__file__).resolve().parents[2]
DATA = os.environ.get("FERRY_DATA_DIR") or os.environ.get("FERRY_DATA_SOURCE")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# epoch, loss (sum), train, test, [NN+SVM train, test, squared hinge]: scene-svm, stencil, seed 0
SCENE = [
    (0, 30561.463754, 0.190667, 0.147333, 1.8482, (0.382, 0.228, 3.230801)),
    (1, 29278.261433, 0.118667, 0.086, 0.0597, None),
    (2, 28530.765004, 0.223333, 0.134, 0.046, None),
    (3, 27419.091459, 0.182, 0.130667, 0.0503, None),
    (4, 26891.495434, 0.264, 0.128667, 0.0679, None),
    (5, 25663.807084, 0.372, 0.148, 0.16, None),
    (6, 25949.058021, 0.289333, 0.142667, 0.0955, None),
    (7, 24828.731456, 0.236, 0.122667, 0.1244, None),
    (8, 24726.087002, 0.260667, 0.127333, 0.0966, None),
    (9, 23542.742785, 0.42, 0.160667, 0.1291, (0.618667, 0.210667, 2.505091)),
]
REASON = "stencil is per-example (batch size 1): CPU"
SCENE_INFO = {"name": "15scene", "path": "ferry/data/15scene", "n_train": 1500, "n_test": 1500,
              "preprocessing": "grayscale, resized to 64x64, [0, 1]"}


def scene_rows(job="scene-svm", dataset="15scene", scale=1.0):
    rows = []
    for e, loss, tr, te, sec, svm in SCENE:
        r = {"job": job, "dataset": dataset, "epoch": e, "loss": loss * scale, "loss_kind": "sum",
             "train_accuracy": tr, "test_accuracy": te, "seconds": sec}
        if svm:
            r.update(svm_train_accuracy=svm[0], svm_test_accuracy=svm[1], svm_squared_hinge=svm[2], svm_fit_after_epoch=e)
        rows.append(r)
    return rows


def write_run(d, job, rows, params, summary=None, gpu="t4", log=None, message=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({
        "run_id": d.name, "job": job, "params": params, "price_per_hour": 0.54, "vm": f"ferry-{d.name}",
        "zone": "us-central1-a", "machine_type": "n1-standard-4", "gpu": gpu, "template": "default"}))
    (d / "status.json").write_text(json.dumps({
        "run_id": d.name, "state": "succeeded", "exit_code": 0, "gpu": gpu, "message": message,
        "started": "2026-12-02T02:49:13.988Z", "ended": "2026-12-02T02:49:25.057Z"}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    if log is not None:
        (d / "logs").mkdir(exist_ok=True)
        (d / "logs" / "output.log").write_text(log)
    return d


SCENE_PARAMS = {"batch_size": None, "device": "auto", "epochs": 10, "image_size": 64, "init": None, "lr": None,
                "mode": "stencil", "seed": 0, "svm_epochs": None, "test_per_class": 100, "train_per_class": 100}
SCENE_CONFIG = {"job": "scene-svm", "mode": "stencil", "epochs": 10, "seed": 0, "lr": 0.5, "batch_size": 1,
                "init": "course", "pixels": "binary", "svm_epochs": None, "device": "auto", "out": "ferry/runs/x/out"}


def scene_summary(**extra):
    """summary.json as trainer/train.py's run_job writes it for scene-svm (the parts read)."""
    return {"job": "scene-svm", "mode": "stencil", "seed": 0, "config": SCENE_CONFIG,
            "best_test_accuracy": 0.160667, "best_epoch": 9, "final_test_accuracy": 0.160667,
            "device": "cpu", "device_reason": REASON, "gpu": None, "dataset": SCENE_INFO,
            "mode_detail": {"kernel": "numba", "loss": "sum over the epoch of -ln(p_y + 1e-10)"},
            "svm": {"fit_after_epochs": [0, 9], "best_test_accuracy": 0.228, "best_after_epoch": 0},
            "report": "NN+SVM on SceneRec: 22.80% (highest accuracy ...)\n  Epoch 0 loss: 30561.5 Accuracy: 22.80%",
            "libraries": {"python": "3.11.7", "numpy": "2.4.6"}, "hardware": {"cpu": "AMD EPYC", "cores": 2}, **extra}


@pytest.fixture
def scene_svm(tmp_path):
    d = write_run(tmp_path / "scene-svm-20261202-024907-epdy", "scene-svm", scene_rows(), SCENE_PARAMS, scene_summary())
    out = report.render(d)
    return out, out["markdown"].read_text(), out["html"].read_text()


class Tables(HTMLParser):
    """Every <table> of a page as lists of cell texts, and the <h2> headings in order."""

    def __init__(self, page):
        super().__init__()
        self.tables, self.h2, self._cell, self._in_h2 = [], [], None, False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_h2:
            self.h2[-1] += data


COURSE_HEADER = ["condition", "highest test accuracy", "epoch 0 loss (network)", "epoch 0 accuracy",
                 "epoch 9 loss (network)", "epoch 9 accuracy"]
SCENE_NN = ["NN on SceneRec", "16.07% (epoch 9)", "30,561.5", "14.73%", "23,542.7", "16.07%"]
SCENE_SVM = ["NN+SVM on SceneRec", "22.80% (epoch 0)", "30,561.5", "22.80%", "23,542.7", "21.07%"]


def md_row(cells):
    return "| " + " | ".join(cells) + " |"


def section(md, title):
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end != -1 else None]


# ---------------------------------------------------------------- the course's table
def test_scene_svm_course_table_cells(scene_svm):
    out, md, page = scene_svm
    q6 = section(md, "Q6: the course's table")
    assert md_row(COURSE_HEADER) in q6
    assert md_row(SCENE_NN) in q6 and md_row(SCENE_SVM) in q6
    assert "MNIST" not in q6  # a single-dataset job: its own conditions, no empty rows
    # the course's own shape, as the write-up asks for it
    assert ("NN+SVM on SceneRec: 22.80% (highest accuracy)\n  Epoch 0 loss: 30,561.5 Accuracy: 22.80%\n"
            "  Epoch 9 loss: 23,542.7 Accuracy: 21.07%") in q6
    assert "NN on SceneRec: 16.07% (highest accuracy)\n  Epoch 0 loss: 30,561.5 Accuracy: 14.73%" in q6
    # the HTML shows the very same cells
    t = Tables(page)
    course = next(tb for tb in t.tables if tb and tb[0] == COURSE_HEADER)
    assert course[1:] == [SCENE_NN, SCENE_SVM]
    data = out["data"]["course"]
    assert [r["condition"] for r in data] == ["NN on SceneRec", "NN+SVM on SceneRec"]
    assert data[1]["epoch9"] == {"epoch": 9, "loss": pytest.approx(23542.742785), "accuracy": 0.210667}


def test_single_condition_nn_job_has_its_row_and_says_svm_was_not_fitted(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("svm")} for r in scene_rows("scene-nn")]
    summary = {k: v for k, v in scene_summary(job="scene-nn").items() if k != "svm"}
    d = write_run(tmp_path / "scene-nn-20261202-000000-abcd", "scene-nn", rows, SCENE_PARAMS, summary)
    md = report.render(d)["markdown"].read_text()
    q6 = section(md, "Q6: the course's table")
    assert md_row(SCENE_NN) in q6 and "| NN+SVM on SceneRec |" not in q6
    assert "NN+SVM was not fitted in this run" in q6
    assert "NN+SVM" not in section(md, "Epochs").split("\n- ")[0]  # no empty SVM columns


def test_q6_table_says_the_nn_svm_loss_is_the_networks(tmp_path):
    rows = scene_rows("mnist", "mnist", scale=5.5) + scene_rows("scene")
    summary = {"job": "q6", "mode": "stencil", "best_test_accuracy": 0.228,
               "datasets": {"mnist": {"device": "cpu", "device_reason": REASON, "dataset": {**SCENE_INFO, "name": "mnist", "n_train": 60000, "n_test": 10000},
                                      "mode_detail": {"loss": "sum over the epoch of -ln(p_y + 1e-10)"}},
                            "15scene": {"device": "cpu", "device_reason": REASON, "dataset": SCENE_INFO,
                                        "mode_detail": {"loss": "sum over the epoch of -ln(p_y + 1e-10)"}}}}
    d = write_run(tmp_path / "q6-20261202-000000-abcd", "q6", rows, {"epochs": 10, "mode": "stencil"}, summary)
    md = report.render(d)["markdown"].read_text()
    q6 = section(md, "Q6: the course's table")
    assert [line.split(" | ")[0] for line in q6.splitlines() if line.startswith("| NN")] == [
        "| NN on MNIST", "| NN+SVM on MNIST", "| NN on SceneRec", "| NN+SVM on SceneRec"]
    assert md_row(SCENE_SVM) in q6
    assert "loss (network)" in q6.splitlines()[2]
    assert "the loss shown is the network's epoch loss, not the SVM's" in q6
    assert "MNIST 3.231 after epoch 0, 2.505 after epoch 9; SceneRec 3.231 after epoch 0" in q6  # the SVM's own loss
    assert "Trained on: CPU (stencil is per-example (batch size 1): CPU); the VM's GPU (T4) was not used" in md


# ---------------------------------------------------------------- the answer first
def test_the_report_leads_with_the_answer_then_the_table_epochs_and_plots(scene_svm):
    _out, md, page = scene_svm
    order = list(re.findall(r"^## (.+)$", md, re.MULTILINE))
    assert order == ["Answer", "Q6: the course's table", "Epochs", "Plots", "Settings", "Run"]
    assert Tables(page).h2 == order
    assert md.index("## Answer") < md.index("| NN on SceneRec |") < md.index("## Epochs") < md.index("![loss]")


def test_final_and_best_are_each_labelled_and_one_best_figure_is_used_everywhere(scene_svm, tmp_path):
    out, md, page = scene_svm
    answer = section(md, "Answer")
    assert "- Final test accuracy (epoch 9, the last): **NN 16.07%** · **NN+SVM 21.07%**" in answer
    assert ("- Best test accuracy (the highest over the epochs): **22.80%** "
            "(NN+SVM, fit after epoch 0; NN: 16.07%, epoch 9)") in answer
    text = re.sub(r"<[^>]+>", "", page)
    assert "Final test accuracy (epoch 9, the last): NN 16.07% · NN+SVM 21.07%" in text
    assert "Best test accuracy (the highest over the epochs): 22.80% (NN+SVM, fit after epoch 0;" in text
    # the figure `runs` lists (status.json's row) and `run` prints: the same 22.80%, with or without summary.json
    summary = json.loads((out["markdown"].parent / "summary.json").read_text())
    rows = scene_rows()
    assert json.loads(trainer_report.row({"state": "succeeded"}, "scene-svm", summary=summary))["best"] == 0.228
    assert json.loads(trainer_report.row({"state": "running"}, "scene-svm", metrics=rows))["best"] == 0.228
    assert records.best_accuracy(None, rows) == records.best_accuracy(summary, rows) == out["data"]["best"] == 0.228
    # no second, different "best" below: the raw summary (NN-only best_test_accuracy, an escaped report) is not dumped
    for shown in (md, page):
        assert "best_test_accuracy" not in shown and "\\n" not in shown and "0.1606" not in shown
        assert "22.80%" in shown


def test_the_device_is_the_trainers_not_only_the_vms(scene_svm, tmp_path):
    _out, md, _page = scene_svm
    assert "- Trained on: CPU (stencil is per-example (batch size 1): CPU); the VM's GPU (T4) was not used" in md
    run = section(md, "Run")
    assert "| VM's GPU | T4 |" in run and "| trained on | CPU (stencil" in run
    assert "| GPU | t4 |" not in md
    on_gpu = scene_summary(device="gpu", gpu="Tesla T4", device_reason="--device gpu", mode="minibatch")
    d = write_run(tmp_path / "gpu" / "scene-svm-20261202-000000-gpu1", "scene-svm", scene_rows(), SCENE_PARAMS, on_gpu)
    md = report.render(d)["markdown"].read_text()
    assert "- Trained on: GPU (Tesla T4) (--device gpu)\n" in md and "was not used" not in md
    d = write_run(tmp_path / "died" / "scene-svm-20261202-000000-dead", "scene-svm", scene_rows()[:3], SCENE_PARAMS)
    md = report.render(d)["markdown"].read_text()
    assert "- Trained on: not recorded (no summary.json: the job has not finished)" in md
    assert "**22.80%**" in section(md, "Answer")  # a run without summary: the same rule, from its metrics


def test_settings_show_the_mode_and_the_values_the_trainer_used(scene_svm):
    _out, md, _page = scene_svm
    assert "- Mode: `stencil` (the course template exactly: per-example SGD); settings: " in md
    assert "lr 0.5" in section(md, "Answer") and "batch_size 1" in section(md, "Answer")
    s = section(md, "Settings")
    assert "| lr | 0.5 | the default for stencil mode |" in s
    assert "| batch_size | 1 | the default for stencil mode |" in s
    assert "| svm_epochs | 0, 9 | the job's default (0,last) |" in s
    assert "| data: SceneRec | 1,500 train / 1,500 test examples; grayscale, resized to 64x64, [0, 1] |  |" in s
    assert "pixels" not in s  # not a parameter of a SceneRec job


def test_q6_settings_and_devices_per_dataset_where_they_differ(tmp_path):
    rows = scene_rows("mnist", "mnist", scale=5.5) + scene_rows("scene")
    config = lambda lr, batch: {**SCENE_CONFIG, "job": "q6", "mode": "minibatch", "lr": lr, "batch_size": batch,
                                "init": "centred"}
    summary = {"job": "q6", "mode": "minibatch", "best_test_accuracy": 0.228, "datasets": {
        "mnist": {"device": "gpu", "gpu": "Tesla T4", "device_reason": "auto: batch 512 on a GPU", "config": config(0.5, 512),
                  "dataset": {**SCENE_INFO, "name": "mnist", "n_train": 60000, "n_test": 10000}},
        "15scene": {"device": "cpu", "device_reason": "auto: batch 32 is faster on the CPU", "config": config(0.005, 32),
                    "dataset": SCENE_INFO}}}
    params = {"mode": "minibatch", "epochs": 10, "lr": None, "batch_size": None, "init": None, "svm_epochs": "0,last"}
    d = write_run(tmp_path / "q6-20261202-000000-mini", "q6", rows, params, summary)
    md = report.render(d)["markdown"].read_text()
    s = section(md, "Settings")
    assert "| lr | MNIST 0.5 / SceneRec 0.005 | the default for minibatch mode |" in s
    assert "| batch_size | MNIST 512 / SceneRec 32 | the default for minibatch mode |" in s
    assert "| svm_epochs | 0,last |  |" in s and "| init | centred | the default for minibatch mode |" in s
    assert "| data: MNIST | 60,000 train / 10,000 test examples;" in s
    assert ("- Mode: `minibatch` (vectorised minibatch SGD: fast, not the course's per-example updates); settings: "
            "epochs 10; lr MNIST 0.5 / SceneRec 0.005; batch_size MNIST 512 / SceneRec 32; init centred; svm_epochs 0,last.") in md
    assert ("- Trained on: MNIST GPU (Tesla T4) (auto: batch 512 on a GPU); "
            "SceneRec CPU (auto: batch 32 is faster on the CPU)\n") in md  # a GPU was used: no "not used"


# ---------------------------------------------------------------- epochs table
def test_epochs_table_has_nn_and_nn_svm_columns(scene_svm):
    _out, md, page = scene_svm
    ep = section(md, "Epochs")
    assert md_row(["epoch", "train loss (sum)", "NN train", "NN test", "NN+SVM train", "NN+SVM test", "epoch time"]) in ep
    assert "| 0 | 30,561.5 | 19.07% | 14.73% | 38.20% | **22.80%** | 1.85 s |" in ep
    assert "| 1 | 29,278.3 | 11.87% | 8.60% |  |  | 0.06 s |" in ep  # no SVM fit after epoch 1
    assert "| 9 | 23,542.7 | 42.00% | **16.07%** | 61.87% | 21.07% | 0.13 s |" in ep
    assert "NN+SVM: fitted after epochs 0, 9 only" in ep
    table = next(tb for tb in Tables(page).tables if tb and tb[0][:2] == ["epoch", "train loss (sum)"])
    assert [r[0] for r in table[1:]] == [str(e) for e in range(10)]
    assert "<td class=\"n\"><b>22.80%</b></td>" in page


# ---------------------------------------------------------------- names and units
def test_one_name_for_the_dataset_and_one_unit_for_accuracy(scene_svm):
    _out, md, page = scene_svm
    assert md.count("15-scene") == 1 and md.startswith("# scene-svm: NN+SVM on SceneRec (15-scene)\n")
    assert "15scene" not in md and "[scene]" not in md and "15-Scene" not in md
    assert "15scene" not in page
    accuracies = re.findall(r"\b\d+\.\d+%", md)
    assert accuracies and all(re.fullmatch(r"\d+\.\d\d%", a) for a in accuracies)  # every one in %, two decimals
    assert not re.search(r"\b0\.(1607|228|2107|1473)\b", md)  # no fraction where a % belongs


# ---------------------------------------------------------------- plots
def _ticks_inside(ax, axis):
    """Labelled ticks inside the data's range on `axis` ('x' or 'y')."""
    values = [v for line in ax.get_lines() for v in (line.get_xdata() if axis == "x" else line.get_ydata())]
    lo, hi = min(values), max(values)
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    getpos = (lambda t: t.get_position()[0]) if axis == "x" else (lambda t: t.get_position()[1])
    return [t.get_text() for t in ticks if lo <= getpos(t) <= hi and t.get_text()]


def _check_figures(figs):
    import matplotlib.pyplot as plt

    assert [name for name, _ in figs] == ["loss", "accuracy"]
    for name, fig in figs:
        fig.canvas.draw()
        assert fig._suptitle is not None and fig._suptitle.get_text()
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel().startswith("epoch") and ax.get_ylabel()
            legend = ax.get_legend()
            assert legend is not None and [t.get_text() for t in legend.get_texts()]
            assert len(_ticks_inside(ax, "y")) >= 3, (name, ax.get_title(), _ticks_inside(ax, "y"))
            xs = _ticks_inside(ax, "x")
            assert xs and all(re.fullmatch(r"\d+", x) for x in xs), xs  # whole epochs only
        plt.close(fig)


def test_q6_plots_one_panel_per_dataset_each_readable(tmp_path):
    rows = scene_rows("mnist", "mnist", scale=5.5) + scene_rows("scene")
    figs = report.figures(rows, "q6", None)
    titles = [[ax.get_title() for ax in fig.axes] for _, fig in figs]
    assert titles == [["MNIST", "SceneRec"], ["MNIST", "SceneRec"]]
    loss_mnist = figs[0][1].axes[0]
    assert loss_mnist.get_yscale() == "linear"  # each panel its own scale: the MNIST range has labelled ticks
    labels = {t.get_text() for t in figs[1][1].axes[0].get_legend().get_texts()}
    assert labels == {"NN train", "NN test", "NN+SVM train", "NN+SVM test"}
    _check_figures(figs)


def test_single_run_plots_and_the_pngs(scene_svm):
    out, _md, _page = scene_svm
    assert {p.name for p in out["plots"]} == {"loss.png", "accuracy.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out["plots"])
    figs = report.figures(out["data"]["metrics"], "scene-svm", out["data"]["summary"])
    assert figs[0][1].axes[0].get_title() == "SceneRec"
    assert "1,500 training examples" in figs[0][1].axes[0].get_ylabel()
    _check_figures(figs)


# ---------------------------------------------------------------- tf-quickstart
TF = [(0, 0.4039, 0.8790, 0.2818, 0.9140), (1, 0.1139, 0.9668, 0.2261, 0.9295), (2, 0.0513, 0.9868, 0.1917, 0.9420),
      (3, 0.0228, 0.9942, 0.1556, 0.9550), (4, 0.0097, 0.9982, 0.1789, 0.9515)]


def tf_run(tmp_path):
    rows = [{"job": "tf-quickstart", "epoch": e, "loss": lo, "train_accuracy": tr, "test_loss": tl, "test_accuracy": te,
             "seconds": 5.1} for e, lo, tr, tl, te in TF]
    log = "[tf-quickstart] TensorFlow 2.21.0 on CPU; 6000 train / 2000 test, batch 32, 5 epochs (import 3.0s)\n" + "".join(
        f"Epoch {e + 1}, Loss: {lo}, Accuracy: {tr * 100}, Test Loss: {tl}, Test Accuracy: {te * 100} [5.1s, 1172 ex/s]\n"
        for e, lo, tr, tl, te in TF)
    summary = {"job": "tf-quickstart", "mode": "tutorial", "device": "CPU", "gpu": None, "best_test_accuracy": 0.955,
               "best_epoch": 3, "final_test_accuracy": 0.9515,
               "dataset": {"name": "mnist", "n_train": 6000, "n_test": 2000, "preprocessing": "x / 255, channel axis"}}
    params = {"epochs": 5, "seed": 0, "batch_size": 32, "jit": False, "intra_threads": None, "inter_threads": 1,
              "train_samples": 6000, "test_samples": 2000, "deterministic": False}
    return write_run(tmp_path / "tf-quickstart-20261202-000000-abcd", "tf-quickstart", rows, params, summary, log=log), rows, log


def test_tf_quickstart_numbers_epochs_as_its_console_and_leads_with_the_final_epoch(tmp_path):
    d, rows, log = tf_run(tmp_path)
    out = report.render(d)
    md = out["markdown"].read_text()
    answer = section(md, "Answer")
    assert "- Final test accuracy (epoch 5, the last): **95.15%**" in answer
    assert "- Best test accuracy (the highest over the epochs): **95.50%** (epoch 4)" in answer
    assert "- Trained on: CPU; the VM's GPU (T4) was not used" in answer
    q7 = section(md, "Q7: the tutorial's output")
    assert all(line in q7 for line in log.splitlines()[1:])  # the console's lines, verbatim
    ep = section(md, "Epochs")
    assert [line.split(" | ")[0] for line in ep.splitlines() if re.match(r"\| \d", line)] == ["| 1", "| 2", "| 3", "| 4", "| 5"]
    assert "| 4 | 0.0228 | 0.1556 | 99.42% | **95.50%** |" in ep
    assert "Epochs count from 1, as the tutorial's output prints them" in ep
    figs = report.figures(rows, "tf-quickstart", out["data"]["summary"])
    for _, fig in figs:
        fig.canvas.draw()
        for ax in fig.axes:
            assert _ticks_inside(ax, "x") == ["1", "2", "3", "4", "5"]  # no 0, no 0.5 steps
    _check_figures(figs)


# ---------------------------------------------------------------- the real trainer
def pct(v):
    return f"{100 * v:.2f}%"


@pytest.mark.skipif(not DATA or not Path(DATA, "15scene").is_dir(), reason="FERRY_DATA_DIR with 15scene/ not set")
def test_a_real_scene_svm_run_reports_what_the_trainer_printed(tmp_path):
    out_dir = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "trainer", "scene-svm", "--out", str(out_dir), "--data-dir", DATA,
                        "--no-download", "--epochs", "10", "--train-per-class", "20", "--test-per-class", "20"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    d = write_run(tmp_path / "scene-svm-20261202-000000-real", "scene-svm", rows,
                  {**SCENE_PARAMS, "train_per_class": 20, "test_per_class": 20}, summary, log=r.stdout)
    md = report.render(d)["markdown"].read_text()
    nn_best = max(x["test_accuracy"] for x in rows)
    fits = [x for x in rows if "svm_test_accuracy" in x]
    assert [x["epoch"] for x in fits] == [0, 9]
    q6 = section(md, "Q6: the course's table")
    assert (f"| NN on SceneRec | {pct(nn_best)} (epoch {summary['best_epoch']}) | {report._num(rows[0]['loss'])} | "
            f"{pct(rows[0]['test_accuracy'])} | {report._num(rows[9]['loss'])} | {pct(rows[9]['test_accuracy'])} |") in q6
    svm_best = max(fits, key=lambda x: x["svm_test_accuracy"])
    assert (f"| NN+SVM on SceneRec | {pct(svm_best['svm_test_accuracy'])} (epoch {svm_best['epoch']}) | "
            f"{report._num(rows[0]['loss'])} | {pct(fits[0]['svm_test_accuracy'])} |") in q6
    # the trainer's own printout of the course's answer says the same highest accuracy and epoch figures
    printed = summary["report"]
    assert printed.startswith(f"NN+SVM on SceneRec: {pct(svm_best['svm_test_accuracy'])} (highest accuracy")
    assert f"Epoch 9 loss: {rows[9]['loss']:.6g} Accuracy: {pct(fits[1]['svm_test_accuracy'])}" in printed
    best = max(nn_best, svm_best["svm_test_accuracy"])
    assert f"Best test accuracy (the highest over the epochs): **{pct(best)}**" in md
    assert json.loads(trainer_report.row({}, "scene-svm", summary=summary))["best"] == pytest.approx(best)
    assert "- Trained on: CPU (stencil is per-example (batch size 1): CPU)" in md


# ---------------------------------------------------------------- the page on a laptop and on paper
@pytest.mark.skipif(not CHROMIUM, reason="chromium not installed")
@pytest.mark.parametrize("which", ["scene-svm", "q6", "tf"])
def test_html_fits_a_laptop_screen_and_prints(tmp_path, which):
    if which == "scene-svm":
        long = "checkpoint upload to gs://ferry-local/runs/" + "x" * 300 + "/checkpoints/ckpt-000010.ckpt retried"
        d = write_run(tmp_path / "scene-svm-20261202-024907-epdy", "scene-svm", scene_rows(), SCENE_PARAMS, scene_summary(),
                      message=long)  # one long word: it wraps instead of widening the page
    elif which == "q6":
        d = write_run(tmp_path / "q6-20261202-000000-abcd", "q6", scene_rows("mnist", "mnist", 5.5) + scene_rows("scene"),
                      {"epochs": 10, "mode": "stencil"}, {"job": "q6", "best_test_accuracy": 0.228})
    else:
        d = tf_run(tmp_path)[0]
    page = report.render(d)["html"]
    assert "@media print" in page.read_text()
    probe = page.with_name("probe.html")  # the page, plus a script that writes its widest extent into the DOM
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.onload=()=>{const w=Math.max(document.documentElement.scrollWidth,"
                   "document.body.scrollWidth);document.body.setAttribute('data-width',w);"
                   "document.body.setAttribute('data-images',[...document.images].filter(i=>i.naturalWidth>0).length);}"
                   "</script></body>"))
    for width in (1366, 1280):
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--window-size={width},900", "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                           capture_output=True, text=True, timeout=120, check=False)
        found = re.search(r'data-width="(\d+)"', r.stdout)
        assert found, r.stderr[-2000:]
        assert int(found.group(1)) <= width, f"the page is {found.group(1)} px wide in a {width} px window"
        assert re.search(r'data-images="2"', r.stdout)  # both plots load
    pdf = tmp_path / "report.pdf"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                        f"--print-to-pdf={pdf}", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert pdf.is_file() and pdf.read_bytes()[:5] == b"%PDF-", r.stderr[-2000:]
