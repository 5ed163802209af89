"""Job files (jobs/jobfile.py): the schema, its one-line errors naming file:line: field, the
built-in jobs as job files, argv and shell forms, `init`, `jobs` and `jobs JOB`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infra.errors import UsageError
from jobs import catalog, jobfile, params, sync

REPO = Path(__file__).resolve().parents[2]
PATHS = {"out": "ferry/runs/r/out", "data": "ferry/data", "code": "ferry/code", "run_id": "r"}


def write(folder: Path, text: str, name: str = "job.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD = textwrap.dedent("""\
    name: mine
    command: [python3, train.py, --out, '{out}']
    params:
      epochs: {type: int, default: 3, min: 1, flag: --epochs}
""")

# (job file text, the line, the field, words the message must hold)
BAD = [
    ("command: 'python train.py | tee x'\n", 1, "command", "shell"),
    ("name: mine\n", 1, "file", "missing command"),
    ("comand: [python3, x.py]\ncommand: [python3]\n", 1, "comand", "allowed: name"),
    ("command: [python3]\ntemplate: cpu\n", 2, "template", "resources"),
    ("command: [python3]\nresources:\n  template: nope\n", 3, "resources.template", "allowed:"),
    ("command: [python3]\nresources:\n  gpu: k9000\n", 3, "resources.gpu", "k9000"),
    ("command: [python3]\nresources:\n  spot: maybe\n", 3, "resources.spot", "true or false"),
    ("command: [python3]\nresources:\n  max_hours: 0\n", 3, "resources.max_hours", "above 0"),
    ("command: [python3]\nresources:\n  cpus: 4\n", 3, "resources.cpus", "allowed: template, gpu"),
    ("command: [python3, '{nope}']\n", 1, "command[1]", "{nope}"),
    ("command: [python3, [a]]\n", 1, "command[1]", "strings or numbers"),
    ("command: {shell: 'x'}\nparams:\n  a: {type: int, default: 1, flag: --a}\n", 3, "params.a.flag", "{a}"),
    ("command: [python3]\nparams:\n  epochs:\n    type: integer\n", 4, "params.epochs.type", "allowed: int"),
    ("command: [python3]\nparams:\n  epochs:\n    type: int\n    default: ten\n", 5, "params.epochs.default", "not a int"),
    ("command: [python3]\nparams:\n  e:\n    type: int\n    default: 0\n    min: 1\n", 5, "params.e.default", "outside"),
    ("command: [python3]\nparams:\n  m: {type: choice, choices: [a, b], default: c}\n", 3, "params.m.default", "one of a, b"),
    ("command: [python3]\nparams:\n  out: 1\n", 3, "params.out", "reserved"),
    ("command: [python3]\nparams:\n  a: {type: int, helpp: x}\n", 3, "params.a.helpp", "allowed: type"),
    ("command: [python3]\nenv:\n  PYTHONPATH: x\n", 3, "env.PYTHONPATH", "set by ferry"),
    ("command: [python3]\nenv:\n  A: [1]\n", 3, "env.A", "plain value"),
    ("command: [python3]\nsecrets: [ok, 'not a name']\n", 2, "secrets[1]", "variable name"),
    ("command: [python3]\nenv: {TOKEN: x}\nsecrets: [TOKEN]\n", 3, "secrets[0]", "either plain or secret"),
    ("command: [python3]\ndatasets: [mnist, cifar]\n", 2, "datasets[1]", "not a built-in dataset"),
    ("command: [python3]\ndatasets:\n  - ./no-such-folder\n", 3, "datasets[0]", "does not exist"),
    ("command: [python3]\ndatasets: ['gs://UPPER/x']\n", 2, "datasets[0]", "gs://BUCKET"),
    ("command: [python3]\ndatasets: ['s3://b/x']\n", 2, "datasets[0]", "only gs://"),
    ("command: [python3]\noutputs: ['../secrets/*']\n", 2, "outputs[0]", "escapes the workdir"),
    ("command: [python3]\noutputs: [/etc/passwd]\n", 2, "outputs[0]", "escapes the workdir"),
    ("command: [python3]\nworkdir: ./nowhere\n", 2, "workdir", "not a folder"),
    ("command: [python3]\nsetup: 'pip install x'\n", 2, "setup", "a list"),
    ("command: [python3]\nsetup:\n  - pip install x\n", 3, "setup[0]", "shell"),
    ("command: [python3]\nname: My_Job\n", 2, "name", "lowercase"),
    ("command: [python3]\nresume: resume\n", 2, "resume", "--resume"),
    ("command: [python3\n", 2, "", "not valid YAML"),
]


@pytest.mark.parametrize("text,line,field,words", BAD, ids=[f"{b[2] or 'yaml'}-{i}" for i, b in enumerate(BAD)])
def test_bad_job_file_is_one_line_naming_file_line_and_field(tmp_path, text, line, field, words):
    path = write(tmp_path / "proj", text)
    with pytest.raises(UsageError) as exc:
        catalog.get(str(path))
    msg = str(exc.value)
    assert exc.value.exit_code == 2 and "\n" not in msg, msg
    assert msg.startswith(f"{path}:{line}: "), msg
    if field:
        assert msg.startswith(f"{path}:{line}: {field}: "), msg
    assert words in msg, msg


def test_bad_job_file_on_the_cli_is_exit_2_one_line_and_nothing_created(tmp_path):
    path = write(tmp_path / "proj", "command: [python3, train.py]\noutputs: ['../x']\n")
    home = tmp_path / "home"
    for args in (["run", str(path)], ["run", str(path), "--dry-run"], ["sweep", str(path), "--dry-run"],
                 ["jobs", str(path)]):
        r = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "FERRY_HOME": str(home), "HOME": str(tmp_path)}, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("backend:")]
        assert len(lines) <= 2 and f"{path}:2: outputs[0]:" in lines[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not (home / "local").exists() and not list(home.rglob("*.json"))


def test_every_builtin_job_is_a_job_file_of_the_same_schema():
    for path in sorted(catalog.CATALOG_DIR.glob("*.yaml")):
        job = catalog.get(str(path))  # by path, as any job file
        same = catalog.get(path.stem)
        assert job == same and job.builtin
        assert job.workdir == REPO / "trainer" and not job.own_workdir
        raw = jobfile._Doc(path, path.read_text()).data
        assert set(raw) <= set(jobfile.FIELDS)  # nothing the user's files could not say
        assert raw["workdir"] == "../../trainer" and "template" in raw["resources"]
        # a copy of it outside the repository is a job file like any other
    assert catalog.get("selftest").command[:2] == ("python3", "{code}/ferry_selftest.py")


def test_a_builtin_copied_out_loads_as_a_user_job(tmp_path):
    text = (catalog.CATALOG_DIR / "mnist-nn.yaml").read_text().replace("../../trainer", str(REPO / "trainer"))
    job = catalog.get(str(write(tmp_path, text, "mnist-nn.yaml")))
    assert not job.builtin and not job.own_workdir and job.params == catalog.get("mnist-nn").params


def test_argv_is_literal_and_shell_form_quotes_every_value(tmp_path):
    path = write(tmp_path / "p", GOOD)
    job = catalog.get(str(path))
    assert job.workdir == (tmp_path / "p").resolve() and job.own_workdir and job.name == "mine"
    argv = params.argv(job, params.resolve(job, ["epochs=5"]), PATHS)
    assert argv == ["python3", "train.py", "--out", "ferry/runs/r/out", "--epochs", "5"]

    path = write(tmp_path / "s", """\
        command: {shell: 'echo {msg} > {out}/m.txt && wc -c {out}/m.txt'}
        params:
          msg: {type: str, default: hi}
    """)
    job = catalog.get(str(path))
    nasty = "'; touch pwned; echo $(id) `id`"
    argv = params.argv(job, params.resolve(job, [f"msg={nasty}"]), PATHS)
    assert argv[:2] == ["bash", "-c"] and job.shell
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([*argv[:2], argv[2].replace("ferry/runs/r/out", str(out)), *argv[3:]], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "m.txt").read_text() == nasty + "\n" and not list(tmp_path.rglob("pwned"))


def test_paths_are_relative_to_the_workdir_on_the_vm(tmp_path):
    from jobs.launch import job_cwd, job_paths

    job = catalog.get(str(write(tmp_path / "p", GOOD)))
    paths = job_paths(job, "r1")
    assert job_cwd(job) == "ferry/code/work"
    import posixpath

    for key in ("out", "data"):
        assert posixpath.normpath(posixpath.join("ferry/code/work", paths[key])) == f"ferry/{'runs/r1/out' if key == 'out' else 'data'}"
    assert job_paths(catalog.get("selftest"), "r1")["out"] == "ferry/runs/r1/out" and job_cwd(catalog.get("selftest")) is None


def test_datasets_outputs_resources_env_secrets(tmp_path):
    (tmp_path / "p" / "data" / "sub").mkdir(parents=True)
    path = write(tmp_path / "p", """\
        command: [python3, t.py]
        env: {A: 1, B: true}
        secrets: [MY_TOKEN]
        datasets: [mnist, ./data, {name: more, from: 'gs://some-bucket/x/y'}]
        outputs: ['model/**/*.npz', weights.bin]
        resources: {template: cpu, gpu: none, spot: true, max_hours: 1.5}
    """)
    job = catalog.get(str(path))
    assert job.env == {"A": "1", "B": "true"} and job.secrets == ("MY_TOKEN",)
    assert job.datasets == ("mnist", "data", "more")
    assert [d.kind for d in job.sources] == ["builtin", "local", "gs"]
    assert job.sources[1].source == str((tmp_path / "p" / "data").resolve())
    assert job.outputs == ("model/**/*.npz", "weights.bin")
    assert (job.template, job.gpu, job.spot, job.max_hours) == ("cpu", "none", True, 1.5)


def test_workdir_sync_honours_its_ferryignore_and_the_code_hash_covers_it(tmp_path):
    wd = tmp_path / "p"
    (wd / "pkg").mkdir(parents=True)
    (wd / "pkg" / "m.py").write_text("x = 1\n")
    (wd / "big.bin").write_bytes(b"0" * 10)
    (wd / ".venv" / "lib").mkdir(parents=True)
    (wd / ".venv" / "lib" / "huge.so").write_bytes(b"1")
    (wd / ".ferryignore").write_text("*.bin\n")
    job = catalog.get(str(write(wd, GOOD)))
    files = sync.job_files(job)
    assert "work/pkg/m.py" in files and "work/job.yaml" in files and "trainer/__init__.py" in files
    assert "ferry_runner.py" in files
    assert not any(k.startswith("work/.venv") or k.endswith("big.bin") or k == "work/.ferryignore" for k in files)
    before = sync.code_hash(sync.manifest(files))
    (wd / "pkg" / "m.py").write_text("x = 2\n")
    assert sync.code_hash(sync.manifest(sync.job_files(job))) != before
    assert sync.code_hash(sync.manifest(sync.job_files(catalog.get("selftest")))) == \
        sync.code_hash(sync.manifest(sync.local_files()))  # the built-ins sync what they always did


def test_setup_key_changes_with_the_commands_and_the_workdir_only(tmp_path):
    from jobs.launch import setup_key

    wd = tmp_path / "p"
    path = write(wd, GOOD + "setup:\n  - [python3, -m, pip, install, -r, requirements.txt]\n")
    (wd / "requirements.txt").write_text("numpy\n")
    job = catalog.get(str(path))
    k1 = setup_key(job, sync.job_files(job))
    assert k1 == setup_key(job, sync.job_files(job))
    (wd / "requirements.txt").write_text("numpy\nscipy\n")
    k2 = setup_key(job, sync.job_files(job))
    assert k2 != k1
    job2 = catalog.get(str(write(wd, GOOD + "setup:\n  - {shell: 'pip install -r requirements.txt'}\n")))
    assert setup_key(job2, sync.job_files(job2)) not in (k1, k2)
    assert setup_key(catalog.get("selftest"), sync.job_files()) is None


def test_init_writes_a_valid_commented_job_file_and_never_overwrites(tmp_path, monkeypatch):
    from jobs.commands import init

    init(str(tmp_path / "proj"))
    text = (tmp_path / "proj" / "job.yaml").read_text()
    assert text.count("#") > 10 and (tmp_path / "proj" / ".ferryignore").is_file()
    job = catalog.get(str(tmp_path / "proj" / "job.yaml"))
    assert job.name == "proj" and job.setup and set(job.params) == {"epochs", "lr"}
    assert catalog.get(str(tmp_path / "proj")) == job  # a folder with a job.yaml is that job
    (tmp_path / "proj" / "job.yaml").write_text("mine")
    with pytest.raises(UsageError) as exc:
        init(str(tmp_path / "proj"))
    assert "already exist" in str(exc.value) and (tmp_path / "proj" / "job.yaml").read_text() == "mine"


def test_jobs_lists_project_files_and_jobs_job_shows_every_parameter(tmp_path):
    write(tmp_path / "a", GOOD)
    write(tmp_path / "b", "command: nope\n", "train.job.yaml")
    env = {"PATH": "/usr/bin:/bin", "FERRY_HOME": str(tmp_path / "home"), "HOME": str(tmp_path), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "--json", "jobs"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    names = {row.get("name") for row in rows}
    assert {"mnist-nn", "q6", "selftest", "mine"} <= names
    bad = [row for row in rows if row.get("error")]
    assert len(bad) == 1 and bad[0]["path"].endswith("train.job.yaml") and "train.job.yaml:1: command:" in bad[0]["error"]

    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "--json", "jobs", "mnist-nn"], capture_output=True,
                       text=True, env=env, timeout=60)
    info = json.loads(r.stdout)
    shown = {p["name"]: p for p in info["params"]}
    assert set(shown) == set(catalog.get("mnist-nn").params)  # every one, those with a null default too
    assert shown["train_samples"]["default"] is None and shown["train_samples"]["range"] == "1 .. inf"
    assert shown["mode"]["range"] == "stencil | minibatch" and shown["batch_size"]["requires"] == {"mode": "minibatch"}
    assert shown["seed"]["range"] == "0 .. 4294967295"
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), "jobs", "mnist-nn"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert "train_samples" in r.stdout and "only with mode=minibatch" in r.stdout


def test_own_datasets_are_staged_checksummed_once_and_again_when_changed(gcs, tmp_path):
    from jobs import datasets
    from jobs.jobfile import Dataset
    from jobs.runner import stage_dataset

    _, bucket = gcs
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x01" * 100)
    said = []
    ds = Dataset("mine", str(folder))
    assert datasets.ensure_source(bucket, ds, tmp_path, progress=said.append) is True
    assert datasets.ensure_source(bucket, ds, tmp_path, progress=said.append) is False  # unchanged: not again
    manifest = json.loads(bucket.blob("datasets/mine/manifest.json").download_as_bytes())
    assert manifest["files"] == 2 and manifest["objects"][0]["name"] == "data.tar"
    vm_data = tmp_path / "vm-data"
    stage_dataset(bucket, "mine", vm_data, said.append)
    assert (vm_data / "mine" / "a.txt").read_text() == "alpha"
    assert (vm_data / "mine" / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 100
    (folder / "a.txt").write_text("beta")
    assert datasets.ensure_source(bucket, ds, tmp_path, progress=said.append) is True  # changed: staged again
    stage_dataset(bucket, "mine", vm_data, said.append)
    assert (vm_data / "mine" / "a.txt").read_text() == "beta"

    # gs://another-bucket/prefix: its objects, staged the same way
    other = bucket.client.create_bucket("someone-elses")
    other.blob("set/x/1.txt").upload_from_string("one")
    other.blob("set/2.txt").upload_from_string("two")
    other.blob("elsewhere/3.txt").upload_from_string("not this")
    gs = Dataset("theirs", "gs://someone-elses/set")
    assert datasets.ensure_source(bucket, gs, tmp_path, progress=said.append) is True
    assert datasets.ensure_source(bucket, gs, tmp_path, progress=said.append) is False
    stage_dataset(bucket, "theirs", vm_data, said.append)
    got = sorted(p.relative_to(vm_data / "theirs").as_posix() for p in (vm_data / "theirs").rglob("*.txt"))
    assert got == ["2.txt", "x/1.txt"]
    with pytest.raises(UsageError):
        datasets.ensure_source(bucket, Dataset("none", "gs://someone-elses/nothing-here"), tmp_path, progress=said.append)


def test_runner_redacts_secrets_in_the_log_even_split_across_writes(tmp_path):
    from jobs.runner import Runner

    (tmp_path / "params.json").write_text(json.dumps({"run_id": "r", "bucket": "b", "argv": []}))
    runner = Runner(tmp_path, {"TOKEN": "abcdefgh-secret", "SHORT": "ab"})
    out = runner.output()
    script = ("printf 'one abcdefgh-secret two\\nabcd'; sleep 0.3; printf 'efgh-secret three\\n'; "
              "printf 'abcdefgh-secre'")
    proc = subprocess.Popen(["bash", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    proc.wait()
    runner.join_output()
    log = (tmp_path / "output.log").read_text()
    assert log == "one [secret TOKEN] two\n[secret TOKEN] three\nabcdefgh-secre"  # a prefix alone is no secret
    # the raw log (every byte, TensorFlow's noise included) is redacted the same way
    assert (tmp_path / "output.raw.log").read_text() == log
