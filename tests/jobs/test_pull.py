"""pull refuses object names that would escape the target folder, before writing anything.

Cloud Storage accepts names like `runs/ID/../x`; the storage emulator does not store them,
so here the bucket listing is a stand-in for google-cloud-storage's (not for our code)."""

from pathlib import Path

import pytest

from infra.errors import CloudError
from jobs.pull import pull_run, safe_target


@pytest.mark.parametrize("rel", ["../x", "../../y", "a/../../x", "/etc/passwd", "a\\..\\x", "a//b", "./x", "", "a/./b"])
def test_unsafe_names(tmp_path, rel):
    assert safe_target(tmp_path / "dest", rel) is None


@pytest.mark.parametrize("rel", ["status.json", "logs/output.log", "artifacts/a/b..c.png", "..hidden"])
def test_safe_names(tmp_path, rel):
    assert safe_target(tmp_path / "dest", rel) == (tmp_path / "dest" / rel).resolve()


class Blob:
    def __init__(self, name):
        self.name, self.size = name, 5

    def download_to_filename(self, path):
        Path(path).write_text("owned")


class Bucket:
    name = "b"

    def __init__(self, names):
        self.client = self
        self.names = names

    def list_blobs(self, bucket, prefix):
        return [Blob(n) for n in self.names if n.startswith(prefix)]


def test_pull_refuses_dotdot_and_writes_nothing(tmp_path):
    rid = "q6-20250101-000000-abcd"
    bucket = Bucket([f"runs/{rid}/status.json", f"runs/{rid}/../x", f"runs/{rid}/../../y"])
    dest = tmp_path / "a" / "b"
    with pytest.raises(CloudError) as exc:
        pull_run(bucket, rid, dest)
    assert "escape" in str(exc.value) and exc.value.exit_code == 3
    assert not (tmp_path / "a").exists()
