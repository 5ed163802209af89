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


# --------------------------------------------------------------------------- catalog == trainer
# Values a careless user types for each kind of parameter; every one the catalog accepts must be
# accepted by the trainer too (else the run would fail on the VM, after provisioning).
CANDIDATES = {
    "int": ["0", "1", "2", "3", "-1", "10000", "10001", "4294967295", "4294967296", "1e3", "2.0", "", "x"],
    "float": ["0", "1e-9", "0.5", "100", "101", "-0.5", "inf", "-inf", "nan", "1e400", "x", ""],
    "str": ["", "x", "0,last", "none", "../x"],
    "epoch-list": ["none", "all", "last", "0", "0,last", "0,2", "2", "9", "10", "0,10", "-1", "x", "0,", ",", "last,0",
                   "0, last", ""],
    "bool": ["true", "false", "yes", "0", "maybe"],
}


def _trainer_accepts(job, values) -> str | None:
    from trainer.cli import check
    from trainer.errors import TrainerError

    argv = params.argv(job, values, {"out": "o", "data": "d", "code": "c", "run_id": "r"})
    assert argv[:3] == ["python3", "-m", "trainer"]
    try:
        check(argv[3:])
    except TrainerError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", [n for n in REQUIRED])
def test_every_value_the_catalog_accepts_the_trainer_accepts(name):
    job = catalog.get(name)
    modes = job.params["mode"].choices if "mode" in job.params else (None,)
    tried = accepted = 0
    for mode in modes:
        for epochs in ("3", "10"):
            base = ([f"mode={mode}"] if mode else []) + [f"epochs={epochs}"]
            for key, p in job.params.items():
                if key in ("mode", "epochs"):
                    continue
                values_to_try = list(p.choices) + ["nonsense"] if p.type == "choice" else CANDIDATES[p.type]
                for text in values_to_try:
                    tried += 1
                    try:
                        values = params.resolve(job, base + [f"{key}={text}"])
                    except UsageError as exc:
                        assert exc.exit_code == 2 and "\n" not in str(exc)
                        continue
                    accepted += 1
                    why = _trainer_accepts(job, values)
                    assert why is None, f"{name}: catalog accepts --set {key}={text!r} ({base}) but the trainer says: {why}"
    assert accepted > 20 and tried > accepted


def test_the_catalog_names_only_options_the_trainer_has():
    from trainer.cli import parser

    sub = parser()._subparsers._group_actions[0].choices
    for name in REQUIRED:
        job = catalog.get(name)
        flags = {opt for action in sub[name]._actions for opt in action.option_strings}
        for key, p in job.params.items():
            assert p.flag in flags, f"{name}: parameter {key} passes {p.flag}, which the trainer does not take"
        for p in job.params.values():
            action = next(a for a in sub[name]._actions if p.flag in a.option_strings)
            if p.type == "choice":
                assert set(p.choices) == set(action.choices), f"{name}: {p.name} choices differ from the trainer's"


def test_lr_inf_and_nan_are_refused_by_both():
    from trainer.cli import check
    from trainer.errors import TrainerError

    job = catalog.get("mnist-nn")
    for text in ("inf", "nan", "-1", "0"):
        with pytest.raises(UsageError):
            params.resolve(job, [f"lr={text}"])
        with pytest.raises(TrainerError):
            check(["mnist-nn", "--lr", text])
