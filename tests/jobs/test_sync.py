import json

from jobs import sync
from jobs.remote import LocalDirRemote

SOURCES = (("pkg", "pkg"), ("run.py", "ferry_runner.py"))


def make_tree(root):
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "a.py").write_text("A = 1\n")
    (root / "pkg" / "sub" / "b.py").write_text("B = 2\n" * 100)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"x" * 1000)
    (root / "pkg" / "big.bin").write_bytes(b"y" * 5000)
    (root / "run.py").write_text("print('runner')\n")
    (root / ".ferryignore").write_text("# comment\n*.bin\n")


def test_first_sync_one_archive_then_nothing_then_one_file(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "vm"
    src.mkdir(), dst.mkdir()
    make_tree(src)
    remote = LocalDirRemote(dst)
    first = sync.sync(remote, root=src, sources=SOURCES)
    assert first.mode == "archive" and first.files_sent == 4
    code = dst / "ferry" / "code"
    assert (code / "pkg" / "sub" / "b.py").read_text() == "B = 2\n" * 100
    assert (code / "ferry_runner.py").exists()
    assert not (code / "pkg" / "big.bin").exists()  # .ferryignore
    assert not (code / "pkg" / "__pycache__").exists()  # default ignore
    assert not (code / ".ferry-sync.tgz").exists()

    before = remote.bytes_sent
    second = sync.sync(remote, root=src, sources=SOURCES)
    assert second.mode == "none" and second.bytes_sent == 0 and remote.bytes_sent == before
    assert second.code_hash == first.code_hash

    (src / "pkg" / "a.py").write_text("A = 42\n")
    (src / "pkg" / "sub" / "b.py").unlink()
    third = sync.sync(remote, root=src, sources=SOURCES)
    assert third.mode == "files" and third.files_sent == 1 and third.bytes_sent == len("A = 42\n")
    assert third.deleted == ["pkg/sub/b.py"] and not (code / "pkg" / "sub" / "b.py").exists()
    assert (code / "pkg" / "a.py").read_text() == "A = 42\n"
    assert third.code_hash != first.code_hash
    m = json.loads((code / sync.MANIFEST).read_text())
    assert m["code_hash"] == third.code_hash


def test_large_sync_warns_before_sending(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "vm"
    src.mkdir(), dst.mkdir()
    make_tree(src)
    (src / ".ferryignore").unlink()
    import os
    (src / "pkg" / "big.bin").write_bytes(os.urandom(5000))
    monkeypatch.setenv("FERRY_SYNC_WARN_MB", "0.001")
    warnings = []
    sync.sync(LocalDirRemote(dst), root=src, sources=SOURCES, warn=warnings.append)
    assert warnings and "MB" in warnings[0] and ".ferryignore" in warnings[0]


def test_ignore_patterns():
    pats = ["__pycache__/", "*.pyc", "data/", "docs/*.md"]
    assert sync.ignored("trainer/__pycache__/x.py", pats)
    assert sync.ignored("trainer/a.pyc", pats)
    assert sync.ignored("trainer/data/x", pats)
    assert sync.ignored("docs/a.md", pats)
    assert not sync.ignored("trainer/a.py", pats)
    assert not sync.ignored("docs/sub/a.md", pats)


def test_real_tree_includes_runner_and_trainer():
    files = sync.local_files()
    assert "ferry_runner.py" in files and "ferry_selftest.py" in files
    assert any(k.startswith("trainer/") for k in files)
    assert not any("__pycache__" in k for k in files)
