"""What runs a Batch task on its VM: the local stand-in for Batch's agent is the VM's
`startup-script` (run by the local VM's guest agent with bash, as root, at boot), and its exit
status is the task's. The Batch service reads that status from the VM's console log
(`--- startup-script exit status N`, written by the VM runtime when the script ends).

The script, for each runnable of the task in order (as the Batch agent runs them):
- a script runnable's `text` is written to a file and run with the interpreter of its shebang
  line, else with /bin/sh (Batch's documented default); a `path` is run the same way;
- environment: BATCH_TASK_INDEX, BATCH_TASK_COUNT, BATCH_TASK_RETRY_ATTEMPT, BATCH_JOB_ID,
  BATCH_JOB_UID, then taskSpec.environment(s).variables, taskGroup.taskEnvironments[index],
  then the runnable's own environment (which overrides the others);
- working directory: a fresh, empty directory under the VM's /tmp (also HOME when the VM's
  root home is not writable, as under bubblewrap), removed when the task ends;
- a runnable exiting non-zero fails the task (its status is the task's exit code) unless
  `ignoreExitStatus`; after a failure only `alwaysRun` runnables run; `background` runnables
  run alongside and are killed once the foreground ones are done.
"""

from __future__ import annotations

import os
import re
import shlex

from infra.local.batch.validation import Plan

START_RE = re.compile(rb"^--- \S+ startup-script: starting$")
EXIT_RE = re.compile(rb"^--- startup-script exit status (-?[0-9]+)$")


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items())


def _heredoc(path_var: str, text: str) -> str:
    mark = "FERRY_BATCH_RUNNABLE_" + os.urandom(6).hex()
    while mark in text:
        mark = "FERRY_BATCH_RUNNABLE_" + os.urandom(6).hex()
    body = text if text.endswith("\n") else text + "\n"
    return f"cat > \"{path_var}\" <<'{mark}'\n{body}{mark}\n"


def task_env(plan: Plan, job_id: str, uid: str, index: int, attempt: int) -> dict[str, str]:
    env = {"BATCH_TASK_INDEX": str(index), "BATCH_TASK_COUNT": str(plan.task_count),
           "BATCH_TASK_RETRY_ATTEMPT": str(attempt), "BATCH_JOB_ID": job_id, "BATCH_JOB_UID": uid}
    env.update(plan.env)
    if plan.task_envs:
        env.update(plan.task_envs[index])
    return env


def startup_script(plan: Plan, job_name: str, job_id: str, uid: str, index: int, attempt: int) -> str:
    lines = [
        "#!/bin/bash",
        f"# The local Cloud Batch agent: job {job_name}, task {index}, retry attempt {attempt}.",
        "# It runs the task's runnables in order; its exit status is the task's (infra/local/batch/agent.py).",
        _exports(task_env(plan, job_id, uid, index, attempt)).rstrip("\n"),
        '__batch_bin=$(mktemp -d "${TMPDIR:-/tmp}/batch-runnables.XXXXXX") || exit 1',
        '__batch_work=$(mktemp -d "${TMPDIR:-/tmp}/batch-task.XXXXXX") || exit 1',
        "trap 'rm -rf \"$__batch_bin\" \"$__batch_work\"' EXIT",
        "trap 'exit 143' TERM",
        '[ -n "$HOME" ] && [ -w "$HOME" ] || export HOME="$__batch_work"',
        'cd "$__batch_work" || exit 1',
        "__batch_run() {  # a script: its shebang's interpreter, else /bin/sh",
        "  local first=''",
        '  IFS= read -r first < "$1" || true',
        '  case "$first" in',
        "    '#!'*) ${first#\\#!} \"$1\" ;;",
        '    *) /bin/sh "$1" ;;',
        "  esac",
        "}",
        "__batch_rc=0",
        "__batch_bg=''",
    ]
    for i, r in enumerate(plan.runnables):
        lines.append(f"# runnable {i} ({r.name})")
        if r.text is not None:
            file_ = f"$__batch_bin/runnable-{i}"
            lines.append(_heredoc(file_, r.text).rstrip("\n"))
        else:
            file_ = r.path
        target = f'"{file_}"' if r.text is not None else shlex.quote(file_)
        env_part = "".join(f"export {k}={shlex.quote(str(v))}; " for k, v in r.env.items())
        call = f"( {env_part}__batch_run {target} ) </dev/null"
        guard = "true" if r.always_run else '[ "$__batch_rc" -eq 0 ]'
        if r.background:
            lines.append(f"if {guard}; then {call} & __batch_bg=\"$__batch_bg $!\"; fi")
        else:
            lines.append(f"if {guard}; then")
            lines.append(f"  {call}")
            lines.append("  __batch_status=$?")
            if not r.ignore_exit_status:
                lines.append('  if [ "$__batch_status" -ne 0 ] && [ "$__batch_rc" -eq 0 ]; then __batch_rc=$__batch_status; fi')
            lines.append("fi")
    lines += [
        'for __batch_pid in $__batch_bg; do kill "$__batch_pid" 2>/dev/null; done',
        'exit "$__batch_rc"',
        "",
    ]
    return "\n".join(lines)


class LogWatch:
    """Follows one VM's console log: has the startup script started, has it exited (status)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.started = False
        self.exit_code: int | None = None

    def poll(self) -> None:
        if self.exit_code is not None or self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.startswith(b"--- "):
                continue
            if START_RE.match(line):
                self.started = True
            m = EXIT_RE.match(line)
            if m:
                self.started = True
                self.exit_code = int(m.group(1))
