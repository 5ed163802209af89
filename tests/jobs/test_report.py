import json

from jobs import report


def write_run(d, job, rows, params=None, summary=None):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"run_id": d.name, "job": job, "params": params or {}, "price_per_hour": 0.35, "vm": "vm-1", "zone": "us-central1-a"}))
    (d / "status.json").write_text(json.dumps({"state": "succeeded", "exit_code": 0, "started": "2025-01-01T00:00:00Z", "ended": "2025-01-01T00:01:00Z"}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def test_report_has_plots_html_and_figures(tmp_path):
    d = tmp_path / "mnist-nn-20250101-000000-abcd"
    rows = [{"epoch": e, "loss": 1.0 / (e + 1), "test_accuracy": 0.8 + e / 100} for e in range(5)]
    write_run(d, "mnist-nn", rows, {"epochs": 5}, {"best_test_accuracy": 0.84})
    out = report.render(d)
    md = out["markdown"].read_text()
    assert "84.00%" in md and "![loss](plots/loss.png)" in md and "succeeded" in md
    assert "$0.0058" in md  # 60 s at $0.35/h
    for p in out["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in out["plots"]} == {"loss.png", "accuracy.png"}
    page = out["html"].read_text()
    assert page.startswith("<!doctype html>") and 'src="plots/accuracy.png"' in page


def test_q6_report_carries_the_course_table(tmp_path):
    d = tmp_path / "q6-20250101-000000-abcd"
    rows = []  # the trainer's shape: one network per dataset, SVM fits after epochs 0 and 9
    for i, (label, ds) in enumerate([("mnist", "mnist"), ("scene", "15scene")]):
        for e in range(10):
            r = {"job": label, "dataset": ds, "epoch": e, "loss": 1000.0 * (i + 1) / (e + 1), "test_accuracy": 0.5 + i / 10 + e / 100}
            if e in (0, 9):
                r["svm_test_accuracy"] = 0.7 + i / 10 + e / 100
            rows.append(r)
    write_run(d, "q6", rows, {"epochs": 10, "mode": "stencil"})
    out = report.render(d)
    md = out["markdown"].read_text()
    assert "NN on MNIST: 59.00% (highest accuracy)" in md
    assert "NN+SVM on MNIST: 79.00% (highest accuracy)" in md
    assert "NN on SceneRec: 69.00% (highest accuracy)" in md
    assert "NN+SVM on SceneRec: 89.00% (highest accuracy)" in md
    assert "  Epoch 0 loss: 2,000.0 Accuracy: 80.00%" in md
    assert "  Epoch 9 loss: 200.0 Accuracy: 89.00%" in md
    assert "Mode: `stencil`" in md
    table = report.q6_table(rows)
    assert [r["condition"] for r in table] == ["NN on MNIST", "NN+SVM on MNIST", "NN on SceneRec", "NN+SVM on SceneRec"]
