"""trainer/ is shipped to the VM alone: every module imports from a copy of the folder by
itself, and none of them pulls in ferry's infra/ or jobs/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, pkgutil, sys
import trainer
assert trainer.__file__.startswith(sys.argv[1]), trainer.__file__
names = [m.name for m in pkgutil.walk_packages(trainer.__path__, "trainer.") if m.name != "trainer.__main__"]
for name in names:
    importlib.import_module(name)
leaked = sorted(k for k in sys.modules if k.split(".")[0] in ("infra", "jobs", "cli"))
assert not leaked, leaked
print(len(names))
"""


def test_every_trainer_module_imports_alone_without_infra_or_jobs(tmp_path):
    shutil.copytree(REPO / "trainer", tmp_path / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 10  # the package's modules were really walked
    help_ = subprocess.run([sys.executable, "-m", "trainer", "--help"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert help_.returncode == 0 and "scene-svm" in help_.stdout and "tf-quickstart" in help_.stdout
