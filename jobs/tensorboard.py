"""`tensorboard RUN|latest`: a run's TensorBoard event files, pulled, and TensorBoard on them.

tf-quickstart writes its event files to out/tensorboard/{train,test}, which the runner uploads
to gs://BUCKET/runs/RUN/artifacts/tensorboard/ while the job runs; any job of the user's that
writes event files under out/ (or lists them in `outputs`) is found the same way: every folder
of artifacts/ holding a `*tfevents*` file. They are downloaded to ./runs/RUN/tensorboard/ (again
on each call: a running job's curves grow) and TensorBoard is started on 127.0.0.1 on a free
port (`--port` to choose), from this environment (the `tf` extra installs it). `--print` only
prints the command.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from infra.errors import UsageError

EVENTS = "tfevents"
# TensorBoard on local event files needs no TensorFlow: its own stub reads them. Naming the module
# tensorboard.compat.notf (its switch for that) saves importing TensorFlow (4-8 s) at start.
LAUNCH = ("import sys, types; sys.modules['tensorboard.compat.notf'] = types.ModuleType('notf'); "
          "sys.argv[0] = 'tensorboard'; from tensorboard.main import run_main; run_main()")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pull_events(bucket, run_id: str, target: Path) -> int:
    """Every object of the run's artifacts/ that lives in a folder holding event files -> target."""
    from jobs import runs as records
    from jobs.pull import safe_target

    prefix = records.prefix(run_id) + "artifacts/"
    blobs = list(bucket.client.list_blobs(bucket, prefix=prefix))
    folders = {b.name[len(prefix):].rsplit("/", 1)[0] if "/" in b.name[len(prefix):] else ""
               for b in blobs if EVENTS in b.name.rsplit("/", 1)[-1]}
    chosen = [b for b in blobs if (b.name[len(prefix):].rsplit("/", 1)[0] if "/" in b.name[len(prefix):] else "") in folders]
    if not chosen:
        raise UsageError(f"run {run_id} has no TensorBoard event files in gs://{bucket.name}/{prefix}",
                         hint="tf-quickstart writes them; other jobs write them under their out/ folder")
    for blob in chosen:
        rel = blob.name[len(prefix):]
        rel = rel[len("tensorboard/"):] if rel.startswith("tensorboard/") else rel
        path = safe_target(target, rel)
        if path is None:
            raise UsageError(f"refusing object name {blob.name!r}: it would escape {target}")
        path.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(path))
    return len(chosen)


def tensorboard(settings, run_id: str, port: int | None = None, print_only: bool = False, dest: str | None = None) -> None:
    from jobs.commands import _resolve_run
    from jobs.common import bucket_of, say

    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a port", hint="give 1-65535, or 0 for a free one")
    if dest and Path(dest).exists() and not Path(dest).is_dir():
        raise UsageError(f"--to {dest}: is a file, not a folder", hint="give a folder (it is created if absent); nothing was written")
    bucket = bucket_of(settings, create=False)
    run_id = _resolve_run(bucket, run_id)
    target = Path(dest) if dest else Path("runs") / run_id / "tensorboard"
    n = pull_events(bucket, run_id, target)
    say(f"{n} event file(s) of {run_id} in {target}")
    port = port or free_port()
    argv = [sys.executable, "-c", LAUNCH, "--logdir", str(target), "--host", "127.0.0.1", "--port", str(port)]
    try:
        import importlib.util

        have = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        have = False
    if print_only or not have:
        if not have:
            say("TensorBoard is not installed in this environment (`pip install -e '.[tf]'` installs it); run:")
        print(shlex.join(["tensorboard", "--logdir", str(target), "--host", "127.0.0.1", "--port", str(port)]))
        return
    say(f"TensorBoard on http://127.0.0.1:{port}/  (Ctrl-C stops it)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    proc = subprocess.Popen(argv, env=env)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
