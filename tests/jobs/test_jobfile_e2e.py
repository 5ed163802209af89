"""A user's own job file end to end on the local backend (real HTTP, SSH, runner; no mocks):
a project outside the repository with its own package and requirements.txt, its setup run
once for two runs on one VM, a secret in the job's environment and nowhere else, outputs
back with `pull`, a local dataset folder staged; a failing setup; a built-in job by path."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import cli, cloud, jget, run_ids, settings, text, vms  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-" + hashlib.sha256(b"ferry-test").hexdigest()[:24]


def project(root: Path, setup_extra: str = "") -> Path:
    (root / "mypkg").mkdir(parents=True)
    (root / "mydata").mkdir()
    (root / "mydata" / "hello.txt").write_text("data from the user's folder\n")
    (root / "requirements.txt").write_text("# nothing beyond the image: pip installs nothing\n")
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "core.py").write_text("def weights(n):\n    return ' '.join(str(i * i) for i in range(n))\n")
    (root / "mypkg" / "main.py").write_text(textwrap.dedent("""\
        import argparse, hashlib, json, os, pathlib
        from mypkg.core import weights
        from trainer.datasets import sources  # ferry's own loaders are importable
        p = argparse.ArgumentParser()
        p.add_argument("--out", type=pathlib.Path)
        p.add_argument("--data", type=pathlib.Path)
        p.add_argument("--n", type=int)
        a = p.parse_args()
        token = os.environ["MY_API_TOKEN"]
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "secret.sha256").write_text(hashlib.sha256(token.encode()).hexdigest())
        (a.out / "seen.json").write_text(json.dumps({"plain": os.environ.get("PLAIN"), "cwd": os.getcwd(),
                                                     "data": (a.data / "mydata" / "hello.txt").read_text(),
                                                     "has_sources": hasattr(sources, "verify")}))
        pathlib.Path("model").mkdir(exist_ok=True)
        pathlib.Path("model/w.txt").write_text(weights(a.n))
        pathlib.Path("model/skip.log").write_text("not an output")
        print(f"job ran with a token of {len(token)} characters", flush=True)
        print(f"careless: {token}!", flush=True)  # the runner redacts it on its way to the log
        """))
    (root / "job.yaml").write_text(textwrap.dedent(f"""\
        name: my-own
        description: a user's own package
        setup:
          - [python3, -m, pip, install, --no-index, --quiet, -r, requirements.txt]
          - {{shell: 'echo "setup ran $(date +%s%N)" >> "$HOME/setup-count.txt"'}}
        {setup_extra}
        command: [python3, -m, mypkg.main, --out, '{{out}}', --data, '{{data}}']
        env: {{PLAIN: plain-value}}
        secrets: [MY_API_TOKEN]
        datasets: [./mydata]
        outputs: ['model/*.txt']
        resources: {{template: cpu}}
        params:
          n: {{type: int, default: 4, min: 1, max: 100, flag: --n}}
        """))
    return root / "job.yaml"


def _everything_in_the_bucket(bucket) -> list[tuple[str, bytes]]:
    return [(b.name, b.download_as_bytes()) for b in bucket.list_blobs()]


def test_own_job_file_setup_once_secret_nowhere_outputs_pulled(cloud, tmp_path):
    from infra import provision

    job = project(tmp_path / "proj")
    vm = provision.up(settings(), template="cpu", name="ferry-test-own")
    try:
        r = cli(cloud, "run", str(job), "--dry-run", "--set", "n=5", cwd=tmp_path, MY_API_TOKEN=SECRET)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr and "MY_API_TOKEN" in r.stdout
        assert "setup:" in r.stdout and "mydata from" in r.stdout

        r = cli(cloud, "run", "proj/job.yaml", "--set", "n=5", cwd=tmp_path, MY_API_TOKEN=SECRET)
        assert r.returncode == 0, r.stderr
        assert "using VM ferry-test-own" in r.stderr
        r2 = cli(cloud, "run", str(job), "--set", "n=6", cwd=tmp_path, MY_API_TOKEN=SECRET)
        assert r2.returncode == 0, r2.stderr
        second, first = run_ids(cloud.bucket)[:2]
        log1 = text(cloud.bucket, f"runs/{first}/logs/output.log")
        log2 = text(cloud.bucket, f"runs/{second}/logs/output.log")
        assert "[ferry] === setup 1/2" in log1 and "[ferry] === setup 2/2" in log1 and "setup done" in log1
        assert "=== setup 1/" not in log2 and "already done on this VM" in log2
        assert "job ran with a token of" in log2 and "careless: [secret MY_API_TOKEN]!" in log2

        # the setup ran once on that VM: its own record says so
        from infra import ssh
        from jobs.remote import SshRemote

        remote = SshRemote(ssh.connect(provision.get(settings(), "ferry-test-own")))
        try:
            assert remote.read("setup-count.txt").decode().count("setup ran") == 1
        finally:
            remote.close()

        for run_id in (first, second):
            p = f"runs/{run_id}/"
            assert jget(cloud.bucket, p + "status.json")["state"] == "succeeded"
            assert text(cloud.bucket, p + "artifacts/secret.sha256") == hashlib.sha256(SECRET.encode()).hexdigest()
            seen = jget(cloud.bucket, p + "artifacts/seen.json")
            assert seen["plain"] == "plain-value" and seen["cwd"].endswith("ferry/code/work") and seen["has_sources"]
            assert seen["data"] == "data from the user's folder\n"
            m = jget(cloud.bucket, p + "manifest.json")
            assert m["job"] == "my-own" and m["job_file"] == str(job.resolve()) and m["secrets"] == ["MY_API_TOKEN"]
        # the secret's value: in no object of the bucket, no file of the local cloud (the VM's disk included)
        for name, data in _everything_in_the_bucket(cloud.bucket):
            assert SECRET.encode() not in data, name
        scanned = []
        for path in cloud.home.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                assert SECRET.encode() not in data, path
                scanned.append(path.name)
        assert {"params.json", "runner.log", "output.log", "status.json"} <= set(scanned)  # the VM's side too
        assert SECRET not in r.stdout + r.stderr + r2.stdout + r2.stderr

        # outputs come back with pull (only what the globs match)
        r = cli(cloud, "pull", second, "--to", str(tmp_path / "pulled"), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "pulled" / "artifacts" / "model" / "w.txt").read_text() == "0 1 4 9 16 25"
        assert not (tmp_path / "pulled" / "artifacts" / "model" / "skip.log").exists()

        # an unset secret: one line naming it, exit 2, no run recorded
        before = run_ids(cloud.bucket)
        r = cli(cloud, "run", str(job), cwd=tmp_path)
        assert r.returncode == 2 and "MY_API_TOKEN" in r.stderr and "Traceback" not in r.stderr
        assert run_ids(cloud.bucket) == before
    finally:
        provision.delete(settings(), "ferry-test-own", vm.zone, provision.Proof(instance_id=vm.id))
    assert vms() == {}


def test_failing_setup_fails_the_run_with_its_exit_code_and_deletes_the_vm(cloud, tmp_path):
    job = project(tmp_path / "proj")
    job.write_text(job.read_text().replace("secrets: [MY_API_TOKEN]\n", "")
                   .replace("  - [python3, -m, pip", "  - {shell: 'echo broken; exit 7'}\n  - [python3, -m, pip"))
    r = cli(cloud, "run", str(job), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    st = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert st["state"] == "failed" and st["exit_code"] == 7 and "setup 1" in st["message"]
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert "broken" in log and "job ran" not in log
    assert vms() == {}


def test_spot_job_file_preempted_resumes_on_a_new_vm_with_its_setup_and_secret(cloud, tmp_path):
    """resources.spot: a preemption recovers the run on a new VM: the workdir synced there, its
    setup run there (a new VM), the secret passed again, the job resumed from its checkpoint
    (a shell: command gets the resume flag and folder as "$@")."""
    import subprocess

    from runhelp import env_of, wait_for

    root = tmp_path / "proj"
    root.mkdir()
    (root / "job.yaml").write_text(textwrap.dedent("""\
        name: spot-own
        setup:
          - {shell: 'echo "setting up on $(hostname)"'}
        command: {shell: 'echo "token: ${#MY_API_TOKEN} chars"; exec python3 {code}/../ferry_selftest.py --out {out} --epochs {epochs} --sleep 0.3 "$@"'}
        secrets: [MY_API_TOKEN]
        resume: --resume
        resources: {spot: true}
        params:
          epochs: {type: int, default: 30, min: 1}
        """))
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "run", str(root / "job.yaml")], cwd=tmp_path,
                            env=env_of(cloud, MY_API_TOKEN=SECRET), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def running():
            if proc.poll() is not None:
                raise AssertionError(f"run ended early: {proc.stderr.read()}")
            ids = run_ids(cloud.bucket)
            if not ids:
                return None
            st = jget(cloud.bucket, f"runs/{ids[0]}/status.json")
            done = text(cloud.bucket, f"runs/{ids[0]}/metrics.jsonl").count("\n") if st["state"] == "running" else 0
            return (ids[0], st["segments"][-1]) if done >= 3 else None

        run_id, seg = wait_for(running, 90, "three epochs")
        cloud.control.preempt(seg["zone"], seg["vm"], grace_s=3)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    st = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert st["state"] == "succeeded" and [s["ended_by"] for s in st["segments"]] == ["preempted", "succeeded"]
    assert st["segments"][1]["resumed_from"] and all(s["spot"] for s in st["segments"])
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert log.count("=== setup 1/1") == 2 and log.count(f"token: {len(SECRET)} chars") == 2
    assert "(resumed after epoch" in log
    epochs = [json.loads(x)["epoch"] for x in text(cloud.bucket, f"runs/{run_id}/metrics.jsonl").splitlines()]
    assert epochs == list(range(30))
    for name, data in _everything_in_the_bucket(cloud.bucket):
        assert SECRET.encode() not in data, name
    assert vms() == {}


def test_builtin_job_by_its_path_runs_as_a_job_file(cloud, tmp_path):
    r = cli(cloud, "run", str(REPO / "jobs" / "catalog" / "selftest.yaml"), "--set", "epochs=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    assert run_id.startswith("selftest-")
    assert "selftest end: exit 0" in text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert vms() == {}


def test_sweep_of_a_job_file_runs_its_package_and_setup_in_each_task(cloud, tmp_path):
    from jobs import sweep

    job = project(tmp_path / "proj")
    r = cli(cloud, "sweep", str(job), "--set", "n=2,3", cwd=tmp_path, MY_API_TOKEN=SECRET)
    assert r.returncode == 2 and "secrets" in r.stderr and "Traceback" not in r.stderr  # no SSH on Batch
    assert sweep.list_sweep_ids(cloud.bucket) == []
    job.write_text(job.read_text().replace("secrets: [MY_API_TOKEN]", "env: {MY_API_TOKEN: not-a-secret}")
                   .replace("env: {PLAIN: plain-value}\n", ""))
    r = cli(cloud, "sweep", str(job), "--set", "n=2,3", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    sid, = sweep.list_sweep_ids(cloud.bucket)
    for i, n in enumerate((2, 3)):
        p = f"sweeps/{sid}/tasks/{i}/"
        assert jget(cloud.bucket, p + "status.json")["state"] == "succeeded"
        log = text(cloud.bucket, p + "logs/output.log")
        assert "=== setup 1/2" in log and "job ran with a token of 12 characters" in log
        assert text(cloud.bucket, p + "artifacts/model/w.txt") == " ".join(str(k * k) for k in range(n))
        assert jget(cloud.bucket, p + "artifacts/seen.json")["data"] == "data from the user's folder\n"
    assert vms() == {}


def test_the_student_model_example_of_the_guide_runs_on_real_mnist(cloud, tmp_path):
    import pytest

    data = os.environ.get("FERRY_DATA_SOURCE")
    if not data or not Path(data, "mnist").is_dir():
        pytest.skip("FERRY_DATA_SOURCE with mnist/ not set")
    r = cli(cloud, "run", str(REPO / "examples" / "student-model" / "job.yaml"), "--set", "train_samples=1000",
            "--set", "epochs=2", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    assert run_id.startswith("student-model-")
    metrics = [json.loads(x) for x in text(cloud.bucket, f"runs/{run_id}/metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1] and metrics[-1]["test_accuracy"] > 0.6
    r = cli(cloud, "pull", run_id, "--to", str(tmp_path / "pulled"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pulled" / "artifacts" / "weights" / "model.npz").stat().st_size > 784 * 10 * 8
    assert "%" in (tmp_path / "pulled" / "report.md").read_text()
    assert vms() == {}
