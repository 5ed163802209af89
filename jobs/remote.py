"""File and command operations on a VM, over SSH (SFTP for files, exec for commands).

`SshRemote` wraps the fabric.Connection that `infra.ssh.connect(vm)` returns. Paths are
relative to the login directory (the VM's home). Commands are argv lists: each element is
shlex-quoted, so a value never reaches a shell unquoted. `LocalDirRemote` does the same
on a local folder and exists for unit tests of the sync logic only.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from infra.errors import CloudError


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def command_line(argv) -> str:
    """argv -> one shell-safe command line (every element quoted)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


def _trace(conn, argv) -> None:
    """`-v` (infra/verbose.py): each remote command, as it is sent."""
    import logging

    log = logging.getLogger("ferry.ssh")
    if log.isEnabledFor(logging.DEBUG):
        text = command_line(argv)
        if "\n" in text or len(text) > 300:  # an inline script: its first line says what it is
            text = text.split("\n", 1)[0][:200] + " ..."
        log.debug("%s@%s:%s  %s", conn.user, conn.host, conn.port, text)


class SshRemote:
    def __init__(self, connection, reconnect=None):
        self.conn = connection
        self._reconnect = reconnect  # () -> a new fabric.Connection, after a dropped link
        self._sftp = None
        self.bytes_sent = 0

    # ---------------------------------------------------------------- connection
    def sftp(self):
        if self._sftp is None:
            self._sftp = self.conn.sftp()
        return self._sftp

    def reconnect(self) -> None:
        self.close()
        if self._reconnect is None:
            self.conn.open()
        else:
            self.conn = self._reconnect()
            self.conn.open()

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:
            pass
        self._sftp = None
        try:
            self.conn.close()
        except Exception:
            pass

    # ---------------------------------------------------------------- files
    def read(self, path: str) -> bytes | None:
        try:
            with self.sftp().open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if getattr(exc, "errno", None) == 2:
                return None
            raise

    def makedirs(self, path: str) -> None:
        sftp = self.sftp()
        parts = [p for p in path.split("/") if p]
        cur = ""
        for part in parts:
            cur = f"{cur}/{part}" if cur else part
            try:
                sftp.stat(cur)
            except (FileNotFoundError, OSError):
                try:
                    sftp.mkdir(cur)
                except OSError:
                    sftp.stat(cur)  # raced or exists: fine if it is there now

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        sftp = self.sftp()
        parent = posixpath.dirname(path)
        if parent:
            self.makedirs(parent)
        tmp = f"{path}.ferry-tmp"
        with sftp.open(tmp, "wb") as f:
            f.set_pipelined(True)
            f.write(data)
        if mode is not None:
            sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, path)
        self.bytes_sent += len(data)

    def remove(self, path: str) -> None:
        try:
            self.sftp().remove(path)
        except (FileNotFoundError, OSError):
            pass

    # ---------------------------------------------------------------- commands
    def run(self, argv, timeout: float = 120) -> Result:
        _trace(self.conn, argv)
        r = self.conn.run(command_line(argv), hide=True, warn=True, in_stream=False, timeout=timeout)
        return Result(r.return_code, r.stdout, r.stderr)

    def run_input(self, argv, data: bytes, timeout: float = 120) -> Result:
        """Run argv with `data` on its stdin (then EOF): how secrets reach the VM, on the SSH
        channel only, never in a file or a command line."""
        _trace(self.conn, argv)  # the command only: its stdin (secrets) is never traced
        self.conn.open()
        chan = self.conn.client.get_transport().open_session(timeout=15)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command_line(argv))
            chan.sendall(data)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.time() + timeout
            while not (chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()):
                if chan.recv_ready():
                    out += chan.recv(1 << 16)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                else:
                    if time.time() > deadline:
                        raise TimeoutError(f"{argv[0]} did not finish within {timeout:g} s")
                    time.sleep(0.01)
            return Result(chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"))
        finally:
            chan.close()

    def stream(self, argv, on_data, *, poll: float = 0.2, should_stop=None) -> int:
        """Run argv and hand its stdout to on_data(bytes) as it arrives; returns the exit code.

        Raises OSError/EOFError-like paramiko errors when the link drops (callers reconnect).
        """
        _trace(self.conn, argv)
        self.conn.open()
        transport = self.conn.client.get_transport()
        chan = transport.open_session(timeout=15)
        chan.settimeout(poll)
        chan.exec_command(command_line(argv))
        import socket as _socket

        try:
            while True:
                if should_stop is not None and should_stop():
                    chan.close()
                    return -1
                try:
                    data = chan.recv(1 << 16)
                except _socket.timeout:
                    if not transport.is_active():
                        raise ConnectionError("SSH connection lost")
                    continue
                if data:
                    on_data(data)
                    continue
                # EOF on stdout: the command ended (or the channel closed under us)
                deadline = time.time() + 5
                while not chan.exit_status_ready():
                    if time.time() > deadline or not transport.is_active():
                        raise ConnectionError("SSH channel closed without an exit status")
                    time.sleep(0.02)
                code = chan.recv_exit_status()
                if code == -1 or not transport.is_active():  # paramiko's mark for a closed link
                    raise ConnectionError("SSH connection lost")
                return code
        finally:
            chan.close()


class LocalDirRemote:
    """The same operations on a local folder (unit tests of sync only)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bytes_sent = 0

    def _p(self, path: str) -> Path:
        return self.root / path

    def read(self, path: str) -> bytes | None:
        try:
            return self._p(path).read_bytes()
        except FileNotFoundError:
            return None

    def makedirs(self, path: str) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)

    def write(self, path: str, data: bytes, mode: int | None = None) -> None:
        p = self._p(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mode is not None:
            p.chmod(mode)
        self.bytes_sent += len(data)

    def remove(self, path: str) -> None:
        self._p(path).unlink(missing_ok=True)

    def run(self, argv, timeout: float = 120) -> Result:
        r = subprocess.run(command_line(argv), shell=True, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        return Result(r.returncode, r.stdout, r.stderr)

    def run_input(self, argv, data: bytes, timeout: float = 120) -> Result:
        r = subprocess.run(command_line(argv), shell=True, cwd=self.root, input=data, capture_output=True, timeout=timeout)
        return Result(r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))

    def close(self) -> None:
        pass


def check(result: Result, what: str) -> Result:
    if result.code != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise CloudError(f"{what} failed on the VM (exit {result.code})" + (f": {detail[-1]}" if detail else ""))
    return result
