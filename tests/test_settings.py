"""Settings resolve in the documented order: flags, environment, config file, gcloud."""

import pytest

from infra.errors import UsageError
from infra.settings import resolve

ENV_VARS = ["FERRY_BACKEND", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_ZONE",
            "FERRY_ZONE", "FERRY_BUCKET"]


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    return tmp_path


def write_gcloud(root, project=None, zone=None):
    (root / "gcloud" / "configurations").mkdir(parents=True)
    lines = []
    if project:
        lines += ["[core]", f"project = {project}"]
    if zone:
        lines += ["[compute]", f"zone = {zone}"]
    (root / "gcloud" / "configurations" / "config_default").write_text("\n".join(lines) + "\n")


def test_no_project_means_local(clean_env):
    s = resolve()
    assert s.backend == "local"
    assert s.project == "ferry-local"
    assert "no GCP project" in s.sources["backend"]


def test_gcloud_project_selects_gcp(clean_env):
    write_gcloud(clean_env, project="from-gcloud", zone="europe-west4-b")
    s = resolve()
    assert (s.backend, s.project, s.zone) == ("gcp", "from-gcloud", "europe-west4-b")
    assert s.bucket == "from-gcloud-ferry"


def test_precedence_flag_env_config_gcloud(clean_env, monkeypatch):
    write_gcloud(clean_env, project="proj-gcloud", zone="us-east1-c")
    home = clean_env / "home"
    home.mkdir()
    (home / "config.yaml").write_text("project: proj-config\nzone: us-west1-b\nbucket: b-config\n")
    s = resolve()
    assert (s.project, s.zone, s.bucket) == ("proj-config", "us-west1-b", "b-config")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj-env")
    monkeypatch.setenv("CLOUDSDK_COMPUTE_ZONE", "asia-east1-a")
    s = resolve()
    assert (s.project, s.zone, s.bucket) == ("proj-env", "asia-east1-a", "b-config")
    assert s.sources["project"] == "environment"
    s = resolve(project="proj-flag", zone="us-central1-f", bucket="b-flag")
    assert (s.project, s.zone, s.bucket) == ("proj-flag", "us-central1-f", "b-flag")


def test_explicit_local_backend_ignores_gcp_project(clean_env, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "real-project")
    s = resolve(backend="local")
    assert s.backend == "local" and s.project == "ferry-local"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"backend": "aws"}, "'aws'"),
    ({"backend": "gcp"}, "needs a project"),
    ({"zone": "moon-1"}, "'moon-1'"),
])
def test_bad_settings_are_usage_errors(clean_env, kwargs, fragment):
    with pytest.raises(UsageError) as info:
        resolve(**kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_broken_config_file_is_one_line(clean_env):
    home = clean_env / "home"
    home.mkdir()
    (home / "config.yaml").write_text("project: [unclosed\n")
    with pytest.raises(UsageError) as info:
        resolve()
    assert "config.yaml" in str(info.value)
