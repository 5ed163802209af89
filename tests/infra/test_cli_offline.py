"""The CLI without any cloud: bad input is one line and exit 2, dry runs need no credentials,
missing credentials are one line, and the fast commands stay fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, *argv):
    rc = cli.run_cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_credentials_allowed(monkeypatch):
    """Fail the test if anything asks for Google credentials."""
    import google.auth

    def refuse(*a, **k):
        raise AssertionError("credentials were looked up")

    monkeypatch.setattr(google.auth, "default", refuse)


@pytest.mark.parametrize("argv,match", [
    (["up", "--gpu", "tt4"], "unknown GPU 'tt4' (did you mean: t4?"),
    (["up", "--gpu", "t4:3"], "invalid GPU count 3 for t4 (valid counts: 1, 2, 4)"),
    (["up", "--gpu", "t4:two"], "invalid GPU count 'two'"),
    (["up", "--name", "My_VM"], "invalid VM name 'My_VM'"),
    (["up", "--template", "nope"], "unknown template 'nope'"),
    (["up", "--max-hours", "0"], "invalid --max-hours 0"),
    (["--zone", "mars", "up"], "invalid zone 'mars'"),
    (["down", "Bad_Name"], "invalid VM name"),
    (["down", "vm-1", "--all"], "not both"),
    (["--backend", "gcp", "--project", "my-proj", "up", "--gpu", "k80"], "end of life on Compute Engine on 2024-05-01"),
    # GCP's own naming rules, before any call (several were once accepted into dry runs)
    (["--bucket", "My_Bucket", "runs"], "invalid bucket name 'My_Bucket'"),
    (["--bucket", "goog-data", "run", "selftest", "--dry-run"], "invalid bucket name 'goog-data'"),
    (["--bucket", "a..b", "up", "--dry-run"], "invalid bucket name 'a..b'"),
    (["--bucket", "192.168.5.4", "up", "--dry-run"], "invalid bucket name '192.168.5.4'"),
    (["--bucket", "x" * 64, "up", "--dry-run"], "invalid bucket name"),
    (["--project", "My-Project", "up", "--dry-run"], "invalid project id 'My-Project'"),
    (["--project", "p", "up", "--dry-run"], "invalid project id 'p'"),
    (["--project", "proj-", "status"], "invalid project id 'proj-'"),
    # a dry run validates as much as the real command
    (["--zone", "us-central1-z", "up", "--dry-run"], "unknown zone 'us-central1-z'"),
    (["--zone", "us-central1-z", "run", "selftest", "--dry-run"], "unknown zone 'us-central1-z'"),
    (["--project", "my-proj", "--zone", "europe-west99-a", "up", "--dry-run"], "unknown zone 'europe-west99-a'"),
    # values the trainer would refuse on the VM, after provisioning
    (["run", "mnist-nn", "--set", "lr=inf", "--dry-run"], "finite"),
    (["run", "mnist-nn", "--set", "batch_size=64", "--dry-run"], "only with mode=minibatch"),
    (["run", "mnist-svm", "--set", "svm_epochs=12", "--dry-run"], "epoch 12 is not in 0..9"),
    (["run", "q6", "--set", "svm_epochs=none", "--dry-run"], "needs at least 1 epoch"),
    (["run", "tf-quickstart", "--set", "seed=99999999999", "--dry-run"], "must be at most"),
    (["pull", "latest", "--to", "README.md"], "is a file, not a folder"),
    # Click's own usage errors: one line too
    (["run"], "missing argument 'JOB|PATH'"),
    (["up", "--max-hours", "many"], "'many' is not a valid float"),
    (["--jsn", "status"], "no such option '--jsn'"),
    (["stauts"], "no such command 'stauts'"),
])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(capsys, isolated_env, no_credentials_allowed, argv, match,
                                                            monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], err
    assert not (isolated_env / "local").exists()  # no local service started, nothing created


@pytest.mark.parametrize("config,match", [
    ("projct: my-proj\n", "unknown setting"),
    ("project: 12345678\n", "project must be text"),
    ("zone: [us-central1-a]\n", "zone must be text"),
    ("project: [\n", "not valid YAML"),
    ("- project\n", "expected a mapping"),
])
def test_a_bad_config_file_is_one_line(capsys, isolated_env, no_credentials_allowed, config, match):
    (isolated_env / "config.yaml").write_text(config)
    rc, _, err = run(capsys, "up", "--dry-run")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_ferry_home_that_is_a_file_is_one_line(capsys, isolated_env, no_credentials_allowed, monkeypatch, tmp_path):
    home = tmp_path / "a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("FERRY_HOME", str(home))
    for argv in (["status"], ["up", "--dry-run"], ["local", "status"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "is a file, not a folder" in err, (argv, err)
    assert home.read_text() == "not a folder"


def test_k80_on_gcp_names_the_successor_and_its_price(capsys, isolated_env, no_credentials_allowed):
    rc, _, err = run(capsys, "--backend", "gcp", "--project", "my-proj", "up", "--gpu", "k80", "--dry-run")
    assert rc == 2
    assert "closest current GPU is t4" in err and "$0.35/h per GPU" in err and "--gpu t4" in err


def test_dry_run_on_gcp_needs_no_credentials(capsys, isolated_env, no_credentials_allowed):
    rc, out, err = run(capsys, "--project", "my-proj", "--zone", "europe-west4-a", "--json",
                       "up", "--gpu", "v100:2", "--spot", "--max-hours", "2", "--dry-run")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["project"] == "my-proj" and plan["zone"] == "europe-west4-a"
    body = plan["instance"]
    assert body["machineType"] == "zones/europe-west4-a/machineTypes/n1-standard-16"
    assert body["guestAccelerators"][0]["acceleratorCount"] == 2
    assert body["scheduling"]["provisioningModel"] == "SPOT"
    assert body["scheduling"]["maxRunDuration"] == {"seconds": "7200"}
    assert plan["max_cost"] == pytest.approx(plan["price_per_hour"] * 2, abs=0.01)
    assert any(c.startswith("POST projects/my-proj/zones/europe-west4-a/instances") for c in plan["calls"])
    rc, out, _ = run(capsys, "--project", "my-proj", "--json", "down", "some-vm", "--dry-run")
    assert rc == 0 and json.loads(out)["vms"] == [{"name": "some-vm", "result": "would delete"}]


def test_human_dry_run_prints_body_calls_and_cost(capsys, isolated_env, no_credentials_allowed):
    rc, out, err = run(capsys, "--project", "my-proj", "up", "--template", "l4", "--dry-run")
    assert rc == 0, err
    assert "g2-standard-4" in out and "$0.71/h" in out and "instances.insert" in out and '"maxRunDuration"' in out


def test_missing_credentials_on_gcp_is_one_line_exit_3(capsys, isolated_env):
    rc, out, err = run(capsys, "--project", "my-proj", "status")
    assert rc == 3
    assert err.strip().count("\n") == 0 and "gcloud auth application-default login" in err


def test_gpus_json_parses(capsys, isolated_env):
    rc, out, _ = run(capsys, "--json", "gpus")
    assert rc == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["k80"]["end_of_life"] == "2024-05-01" and rows["k80"]["successor"] == "t4"
    assert rows["t4"]["vm_price_per_hour"] == pytest.approx(0.54, abs=0.01)
    assert all(r["price_date"] and r["price_source"] for r in rows.values())


def test_help_and_gpus_do_not_import_compute_v1(isolated_env):
    code = ("import sys, cli; cli.run_cli(['gpus']); cli.run_cli(['up', '--gpu', 'k80', '--dry-run']);"
            "assert 'google.cloud.compute_v1' not in sys.modules, 'compute_v1 imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_bad_input_on_the_default_local_backend_is_one_line(capsys):
    rc, out, err = run(capsys, "up", "--gpu", "tt4")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: unknown GPU")


def test_run_dry_run_shows_the_instance_body_and_the_cost_it_would_confirm(capsys, isolated_env, no_credentials_allowed):
    rc, out, err = run(capsys, "run", "mnist-nn", "--dry-run")
    assert rc == 0, err
    assert "cost:      at most $2.16" in out  # $0.54/h for the template's 4 h limit
    body = json.loads(out.split("instance body (instances.insert):\n", 1)[1].rsplit("dry run:", 1)[0])
    assert body["labels"]["ferry-run"].startswith("mnist-nn-") and body["scheduling"]["maxRunDuration"]["seconds"] == "14400"
    meta = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert meta["ferry-run-bucket"] == "ferry-local" and "ferry/setup" in meta["startup-script"]
    assert "https://www.googleapis.com/auth/compute" in body["serviceAccounts"][0]["scopes"]
    assert not (isolated_env / "local").exists()
