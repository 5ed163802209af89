import pytest

from infra.errors import UsageError
from jobs import catalog, params

REQUIRED = ("mnist-nn", "mnist-svm", "scene-nn", "scene-svm", "tf-quickstart", "q6")


def test_catalog_has_the_course_jobs():
    jobs = catalog.load_all()
    for name in REQUIRED:
        assert name in jobs
        job = jobs[name]
        assert job.description and job.command and job.template
    assert jobs["q6"].datasets == ("mnist", "15scene")


def test_unknown_job_names_the_closest():
    with pytest.raises(UsageError) as exc:
        catalog.get("mnist-n")
    text = str(exc.value)
    assert exc.value.exit_code == 2 and "\n" not in text
    assert "mnist-nn" in text


def test_set_overrides_are_validated():
    job = catalog.get("mnist-nn")
    values = params.resolve(job, ["epochs=3", "mode=minibatch"])
    assert values["epochs"] == 3 and values["mode"] == "minibatch"
    for bad in (["epochs=three"], ["epochs=0"], ["mode=fast"], ["nope=1"], ["epochs"], ["seed=1.5"]):
        with pytest.raises(UsageError) as exc:
            params.resolve(job, bad)
        assert exc.value.exit_code == 2
    with pytest.raises(UsageError) as exc:
        params.resolve(job, ["epoch=3"])
    assert "epochs" in str(exc.value)


def test_argv_keeps_values_literal():
    job = catalog.get("selftest")
    nasty = "'; touch pwned #`id`$(id){out}"
    values = params.resolve(job, [f"message={nasty}", "epochs=2"])
    argv = params.argv(job, values, {"out": "ferry/runs/x/out", "data": "ferry/data", "code": "ferry/code", "run_id": "x"})
    assert nasty in argv  # one element, unchanged, placeholders inside values not expanded
    assert argv[argv.index("--epochs") + 1] == "2"
    assert argv[:2] == ["python3", "ferry/code/ferry_selftest.py"]


def test_null_default_is_omitted_until_set():
    job = catalog.get("mnist-nn")
    paths = {"out": "o", "data": "d", "code": "c", "run_id": "r"}
    assert "--train-samples" not in params.argv(job, params.resolve(job, []), paths)
    argv = params.argv(job, params.resolve(job, ["train_samples=500"]), paths)
    assert argv[argv.index("--train-samples") + 1] == "500"
