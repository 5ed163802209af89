"""The asyncssh-mode SSH server of a local VM: pure Python, no root, no system packages.

Behaves like sshd where ferry and Fabric can tell: public-key auth against the `ssh-keys`
metadata (read at each login, so setMetadata applies to new connections), exec and shell
requests run `/bin/sh` in their own session/process group with the VM's environment, pty
requests get a real pseudo-terminal, signals from the client reach the command's process
group, the exit status (or signal) goes back, SFTP is chrooted to the disk directory, and a
dropped connection sends SIGHUP to the process groups of its running commands.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import struct
import termios
import threading
from typing import Callable

import asyncssh

from .spec import parse_ssh_keys


def _signal_number(name: str) -> int | None:
    name = name.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return getattr(signal, name, None)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name[3:]
    except ValueError:
        return "KILL"


class EmbeddedSshd:
    """An asyncssh server on 127.0.0.1:<free port>, run on its own event loop thread."""

    def __init__(self, *, host_key_path, disk_dir, keys: Callable[[], str], env_for: Callable[[str, str | None], dict], on_spawn: Callable[[int], None]):
        self._host_key_path = str(host_key_path)
        self._disk_dir = str(disk_dir)
        self._keys = keys  # -> current ssh-keys metadata value
        self._env_for = env_for  # (user, term) -> environment of a session
        self._on_spawn = on_spawn  # pgid of each started command (for stop)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vm-sshd", daemon=True)
        self._acceptor = None
        self._conns: dict = {}  # SSHServerConnection -> set of running pgids
        self.port = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = fut.result(timeout=30)

    async def _listen(self) -> int:
        outer = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn):
                self._conn = conn
                outer._conns[conn] = set()

            def connection_lost(self, exc):
                # like sshd: the session's processes get SIGHUP; a command that detached
                # with setsid (its own session and process group) survives.
                for pgid in outer._conns.pop(self._conn, set()):
                    try:
                        os.killpg(pgid, signal.SIGHUP)
                    except OSError:
                        pass

            def begin_auth(self, username):
                return True

            def password_auth_supported(self):
                return False

            def kbdint_auth_supported(self):
                return False

            def host_based_auth_supported(self):
                return False

            def public_key_auth_supported(self):
                return True

            def validate_public_key(self, username, key):
                blob = key.public_data
                return any(u == username and b == blob for u, _, b in parse_ssh_keys(outer._keys()))

        def sftp_factory(chan):
            return asyncssh.SFTPServer(chan, chroot=outer._disk_dir)

        self._acceptor = await asyncssh.create_server(
            Server, "127.0.0.1", 0,
            server_host_keys=[self._host_key_path],
            process_factory=self._session,
            sftp_factory=sftp_factory,
            allow_scp=True,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=True,
            login_timeout=30,
            keepalive_interval=0,
        )
        return self._acceptor.sockets[0].getsockname()[1]

    def drop_connections(self) -> None:
        async def drop():
            for conn in list(self._conns):
                conn.abort()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=5)

    def stop(self) -> None:
        """Stop listening and abort every connection (the caller kills the processes)."""
        if not self._thread.is_alive():
            return

        async def shutdown():
            if self._acceptor is not None:
                self._acceptor.close()
            for conn in list(self._conns):
                conn.abort()
            await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        except Exception:
            pass

    def close_loop(self) -> None:
        """After the VM's processes are dead: stop the event loop thread."""
        if not self._thread.is_alive():
            return

        async def finish():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=0.3) if tasks else None
        try:
            asyncio.run_coroutine_threadsafe(finish(), self._loop).result(timeout=2)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
        if not self._thread.is_alive():
            self._loop.close()

    # ---------------------------------------------------------------- sessions
    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        conn = process.get_extra_info("connection")
        user = process.get_extra_info("username")
        term = process.term_type
        command = process.command
        argv = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh", "-i"]
        env = self._env_for(user, term)
        for k, v in (process.env or {}).items():  # like Debian's sshd: AcceptEnv LANG LC_*
            k = k.decode() if isinstance(k, bytes) else str(k)
            v = v.decode() if isinstance(v, bytes) else str(v)
            if k == "LANG" or k.startswith("LC_"):
                env[k] = v
        try:
            if term:
                code = await self._run_pty(process, argv, env, conn)
            else:
                code = await self._run_pipes(process, argv, env, conn)
        except Exception as exc:  # could not start /bin/sh, cwd gone, ...
            try:
                process.stderr.write(f"ferry local vm: {exc}\n".encode())
                process.exit(255)
            except Exception:
                pass
            return
        try:
            if code < 0:
                process.exit_with_signal(_signal_name(-code))
            else:
                process.exit(code)
        except Exception:
            pass

    def _track(self, conn, pgid: int, add: bool) -> None:
        pgids = self._conns.get(conn)
        if pgids is not None:
            (pgids.add if add else pgids.discard)(pgid)
        elif add:  # the connection closed while the command was starting: hang it up too
            try:
                os.killpg(pgid, signal.SIGHUP)
            except OSError:
                pass

    async def _pump_stdin(self, process, write, close, pgid, on_resize=None) -> None:
        eof = False
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.SignalReceived as exc:
                num = _signal_number(exc.signal)
                if num:
                    try:
                        os.killpg(pgid, num)
                    except OSError:
                        pass
                continue
            except asyncssh.TerminalSizeChanged as exc:
                if on_resize:
                    on_resize(exc.width, exc.height, exc.pixwidth, exc.pixheight)
                continue
            except asyncssh.BreakReceived:
                continue
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError):
                data = b""
            if not data:
                if not eof:
                    eof = True
                    close()
                return
            try:
                await write(data)
            except (OSError, ConnectionError):
                pass  # the command closed its stdin: drop input, keep serving signals

    @staticmethod
    async def _pump_out(reader, writer) -> None:
        open_ = True
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            if open_:
                try:
                    writer.write(chunk)
                    await writer.drain()
                except Exception:
                    open_ = False  # client gone: discard (the process got SIGHUP)

    async def _run_pipes(self, process, argv, env, conn) -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=self._disk_dir, env=env,
            start_new_session=True, close_fds=True,
        )
        pgid = proc.pid
        self._on_spawn(pgid)
        self._track(conn, pgid, True)

        async def write(data):
            proc.stdin.write(data)
            await proc.stdin.drain()

        def close():
            try:
                proc.stdin.close()
            except Exception:
                pass

        stdin_task = asyncio.ensure_future(self._pump_stdin(process, write, close, pgid))
        try:
            await asyncio.gather(self._pump_out(proc.stdout, process.stdout), self._pump_out(proc.stderr, process.stderr))
            return await proc.wait()
        finally:
            self._track(conn, pgid, False)
            stdin_task.cancel()

    async def _run_pty(self, process, argv, env, conn) -> int:
        master, slave = os.openpty()
        cols, rows, pw, ph = process.term_size

        def resize(c, r, x, y):
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", r, c, x, y))
            except OSError:
                pass

        if cols and rows:
            resize(cols, rows, pw, ph)

        def make_controlling_tty():  # runs in the child, after fork
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, cwd=self._disk_dir, env=env,
                preexec_fn=make_controlling_tty, close_fds=True,
            )
        finally:
            os.close(slave)
        pgid = proc.pid
        self._on_spawn(pgid)
        self._track(conn, pgid, True)
        os.set_blocking(master, False)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        out_open = [True]

        def readable():
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError:  # EIO: every slave fd is closed
                data = b""
            if not data:
                loop.remove_reader(master)
                if not done.done():
                    done.set_result(None)
                return
            if out_open[0]:
                try:
                    process.stdout.write(data)
                except Exception:
                    out_open[0] = False

        loop.add_reader(master, readable)

        async def write(data):
            view = memoryview(data)
            while view:
                try:
                    n = os.write(master, view)
                    view = view[n:]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EBADF):
                        return
                    raise

        def close():
            try:
                os.write(master, b"\x04")  # EOF on a terminal is ^D
            except OSError:
                pass

        stdin_task = asyncio.ensure_future(self._pump_stdin(process, write, close, pgid, resize))
        try:
            code = await proc.wait()
            # like sshd: when the shell exits the session ends; drain what is buffered
            try:
                await asyncio.wait_for(asyncio.shield(done), 0.05)
            except asyncio.TimeoutError:
                pass
            return code
        finally:
            self._track(conn, pgid, False)
            stdin_task.cancel()
            loop.remove_reader(master)
            os.close(master)
