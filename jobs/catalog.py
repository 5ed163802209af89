"""The job catalog: the built-in jobs are job files in jobs/catalog/, of exactly the schema
a user's own job file has (jobs/jobfile.py: workdir, setup, command, env, secrets, datasets,
outputs, resources, params). Their workdir is ferry's trainer/. `get(JOB)` takes a built-in
name or a path to a job file; `project_files()` finds the job files of the current project.

A job file names the command run on the VM (an argv list, never a shell line), the datasets
it needs, its default VM template and its parameters with their defaults. `{name}` in a
command element is replaced by a parameter's value or by one of the run's paths:
`{out}` (the job's output folder), `{data}` (the datasets folder), `{code}` (the synced code),
`{run_id}`. A parameter with a `flag` is appended as `flag value` (omitted when its value is
null; a bool adds the flag alone when true).

Parameter types encode what the job's program accepts, so that a bad value is refused before
anything is created: `int`, `float` (finite), `str` (optionally a `pattern`), `bool`,
`choice`, and `epoch-list` (none, all, last, or indices like 0,last, each below the job's
`epochs`; `min_items`). `min`/`max` bound numbers; `requires: {param: value}` allows a value
only with another parameter so set (e.g. a batch size only in minibatch mode).

`resume: FLAG` says the job writes checkpoints into `{out}/checkpoints` (trainer/checkpoint.py)
and continues from a folder of them given as `FLAG DIR`: a run preempted or lost on one VM
then resumes on the next where it stopped (`run --spot`, `--recover N`, `resume RUN`).
Without it a recovered run starts the job over.
tests/jobs/test_catalog.py checks every built-in job against the trainer's own parser.
"""

from __future__ import annotations

import os
from pathlib import Path

from infra.errors import UsageError, unknown
from jobs.jobfile import PARAM_TYPES, PATH_PLACEHOLDERS, Dataset, Job, Param, looks_like_path  # noqa: F401

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
PROJECT_PATTERNS = ("job.yaml", "job.yml", "ferry.yaml", "*.job.yaml", "*.job.yml")
PROJECT_SKIP = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", "runs", "sweeps"}


def _load(path: Path) -> Job:
    from jobs import jobfile

    return jobfile.load(path, builtin=True)


def load_all(directory: Path = CATALOG_DIR) -> dict[str, Job]:
    jobs = {}
    for path in sorted(directory.glob("*.yaml")):
        job = _load(path)
        jobs[job.name] = job
    return jobs


def get(name: str, directory: Path = CATALOG_DIR, check_paths: bool = True) -> Job:
    """The built-in job called `name`, or the job file at path `name` (anything with a `/`, a
    leading `.` or a .yaml/.yml ending); an unknown name is a UsageError naming the closest."""
    from jobs import jobfile

    path = directory / f"{name}.yaml"
    if "/" not in name and path.is_file():
        return _load(path)
    if looks_like_path(name) or Path(name).is_file():
        target = Path(name).expanduser()
        if target.is_dir():
            for candidate in ("job.yaml", "job.yml", "ferry.yaml"):
                if (target / candidate).is_file():
                    target = target / candidate
                    break
            else:
                raise UsageError(f"{name}: a folder without job.yaml", hint="python cli.py init DIR writes one")
        if not target.is_file():
            raise UsageError(f"job file {name} does not exist",
                             hint="JOB is a built-in job (python cli.py jobs) or a path to a job file")
        if target.resolve().parent == CATALOG_DIR:  # a built-in job, by its path
            return _load(target.resolve())
        return jobfile.load(target, check_paths=check_paths)
    raise unknown("job", name, [p.stem for p in directory.glob("*.yaml")])


def project_files(root: Path | None = None, depth: int = 3) -> list[Path]:
    """Job files in the current project: job.yaml, ferry.yaml and *.job.yaml under `root`."""
    import fnmatch

    root = Path(root or os.getcwd())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if d not in PROJECT_SKIP and not d.startswith(".")
                             and rel_depth < depth and Path(dirpath, d).resolve() != CATALOG_DIR)
        for f in sorted(filenames):
            if any(fnmatch.fnmatchcase(f, pat) for pat in PROJECT_PATTERNS):
                found.append(Path(dirpath) / f)
    return found
