"""The asyncssh-mode SSH server of a local VM: pure Python, no root, no system packages.

Behaves like sshd where ferry, Fabric and OpenSSH's clients can tell: public-key auth against
the `ssh-keys` metadata (read at each login, so setMetadata applies to new connections), exec
and shell requests run bash (the login shell of Google's images) in their own session/process
group with the VM's environment and inside the VM's sandbox, pty requests get a real
pseudo-terminal, signals from the client reach the command's process group, the exit status (or
signal) goes back — for SFTP and scp too (status 0, as sftp-server's) —, `direct-tcpip` (ssh -L,
-D) and `tcpip-forward` (ssh -R) to and on loopback work, SFTP sees the same paths as a shell
(home, /tmp; relative paths from home), and a dropped connection sends SIGHUP to what runs on
a pseudo-terminal only: like sshd, a command without one keeps running (it sees EOF on stdin
and a closed stdout).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import posixpath
import shutil
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


BASH = shutil.which("bash") or "/bin/sh"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "")


class VmSftpServer(asyncssh.SFTPServer):
    """SFTP with the paths a shell on the VM sees: MOUNTS [(VM path, local path)] map the VM's
    home and /tmp; relative paths start at HOME; elsewhere is this machine's filesystem, read-only
    when the VM is sandboxed. Ends with exit status 0, as OpenSSH's sftp-server."""

    _WRITE = 0x02 | 0x08 | 0x10 | 0x20  # FXF_WRITE, CREAT, TRUNC, EXCL

    def __init__(self, chan, mounts, home: str, read_only_elsewhere: bool):
        super().__init__(chan)
        self._mounts = sorted(((vm.encode(), host.encode()) for vm, host in mounts), key=lambda m: -len(m[0]))
        self._home = home.encode()
        self._ro = read_only_elsewhere

    def _vm_path(self, path: bytes) -> bytes:
        return posixpath.normpath(posixpath.join(self._home, path))

    def _mount(self, vm_path: bytes):
        for vm, host in self._mounts:
            if vm_path == vm or vm_path.startswith(vm + b"/"):
                return host + vm_path[len(vm):]
        return None

    def map_path(self, path: bytes) -> bytes:
        vm_path = self._vm_path(path)
        mapped = self._mount(vm_path)
        return vm_path if mapped is None else mapped

    def reverse_map_path(self, path: bytes) -> bytes:
        for vm, host in self._mounts:
            if path == host or path.startswith(host + b"/"):
                return vm + path[len(host):]
        return path

    def _writable(self, path: bytes) -> None:
        if self._ro and self._mount(self._vm_path(path)) is None:
            raise asyncssh.SFTPPermissionDenied("read-only file system")

    def open(self, path, pflags, attrs):
        if pflags & self._WRITE:
            self._writable(path)
        return super().open(path, pflags, attrs)

    def open56(self, path, desired_access, flags, attrs):
        self._writable(path)
        return super().open56(path, desired_access, flags, attrs)

    def mkdir(self, path, attrs):
        self._writable(path)
        return super().mkdir(path, attrs)

    def rmdir(self, path):
        self._writable(path)
        return super().rmdir(path)

    def remove(self, path):
        self._writable(path)
        return super().remove(path)

    def rename(self, oldpath, newpath, flags=0):
        self._writable(oldpath)
        self._writable(newpath)
        return super().rename(oldpath, newpath, flags) if flags else super().rename(oldpath, newpath)

    def posix_rename(self, oldpath, newpath):
        self._writable(oldpath)
        self._writable(newpath)
        return super().posix_rename(oldpath, newpath)

    def setstat(self, path, attrs):
        self._writable(path)
        return super().setstat(path, attrs)

    def symlink(self, oldpath, newpath):
        self._writable(newpath)
        return super().symlink(oldpath, newpath)

    def exit(self):
        result = super().exit()
        try:
            self._chan.exit(0)  # OpenSSH's scp and sftp want the exit status of the session
        except Exception:
            pass
        return result


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name[3:]
    except ValueError:
        return "KILL"


def _signal_command(pgid: int, num: int) -> None:
    """A signal from the client: to the command's process group, but not to a sandbox's bwrap
    (the group's leader), which would die of it instead of reporting how the command ended."""
    leader = _is_bwrap(pgid)
    if not leader:
        try:
            os.killpg(pgid, num)
        except OSError:
            pass
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            if int(stat[stat.rindex(b")") + 2:].split()[2]) == pgid:
                os.kill(int(entry), num)
        except (OSError, ValueError, IndexError):
            pass


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip() == b"bwrap"
    except OSError:
        return False


def _hang_up_pipes(proc) -> None:
    """What sshd does to a command without a pty when its client goes: close its stdin (EOF)
    and the read side of its stdout and stderr (its next write fails), nothing more."""
    transport = getattr(proc, "_transport", None)
    for fd in (0, 1, 2):
        try:
            pipe = transport.get_pipe_transport(fd) if transport is not None else None
            if pipe is not None:
                pipe.close()
        except Exception:
            pass


def _as_signal(code: int, sent: set) -> int:
    """bwrap reports a command killed by signal N as exit 128 + N: when the client sent N, say
    it was the signal (negative, as asyncio does), as sshd would."""
    if code > 128 and (code - 128) in sent:
        return -(code - 128)
    return code


class EmbeddedSshd:
    """An asyncssh server on 127.0.0.1:<free port>, run on its own event loop thread."""

    def __init__(self, *, host_key_path, disk_dir, keys: Callable[[], str], env_for: Callable[[str, str | None], dict],
                 on_spawn: Callable[[int], None], wrap: Callable | None = None, sftp_mounts: Callable | None = None,
                 home_for: Callable[[str], str] | None = None):
        self._host_key_path = str(host_key_path)
        self._disk_dir = str(disk_dir)
        self._keys = keys  # -> current ssh-keys metadata value
        self._env_for = env_for  # (user, term) -> environment of a session
        self._on_spawn = on_spawn  # pgid of each started command (for stop)
        self._wrap = wrap or (lambda argv, user, cwd=None: list(argv))  # argv as run on the VM
        self._sftp_mounts = sftp_mounts or (lambda user: [(self._disk_dir, self._disk_dir)])
        self._home_for = home_for or (lambda user: self._disk_dir)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vm-sshd", daemon=True)
        self._acceptor = None
        self._conns: dict = {}  # SSHServerConnection -> set of pgids running on a pty
        self._pipes: dict = {}  # SSHServerConnection -> set of processes running without one
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
                outer._pipes[conn] = set()

            def connection_lost(self, exc):
                # like sshd: what runs on a pseudo-terminal gets SIGHUP (the terminal hangs up);
                # a command without one keeps running, seeing EOF and a closed stdout.
                for pgid in outer._conns.pop(self._conn, set()):
                    try:
                        os.killpg(pgid, signal.SIGHUP)
                    except OSError:
                        pass
                for proc in outer._pipes.pop(self._conn, set()):
                    _hang_up_pipes(proc)

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

            # port forwarding, as sshd's AllowTcpForwarding: on the VM's own loopback
            def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
                return dest_host in LOOPBACK

            def server_requested(self, listen_host, listen_port):
                return listen_host in LOOPBACK

        def sftp_factory(chan):
            user = chan.get_extra_info("username")
            mounts = outer._sftp_mounts(user)
            sandboxed = mounts != [(outer._disk_dir, outer._disk_dir)]
            return VmSftpServer(chan, mounts, outer._home_for(user), read_only_elsewhere=sandboxed)

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
            # a hang guard, not a speed bound: under load the loop thread can lag by seconds
            asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=30)

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
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
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
        argv = self._wrap([BASH, "-c", command] if command is not None else [BASH, "-i"], user)
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

    async def _pump_stdin(self, process, write, close, pgid, on_resize=None, sent=None) -> None:
        eof = False
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.SignalReceived as exc:
                num = _signal_number(exc.signal)
                if num:
                    _signal_command(pgid, num)
                    if sent is not None:
                        sent.add(num)
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
        pipes = self._pipes.get(conn)
        if pipes is None:  # the connection closed while the command was starting
            _hang_up_pipes(proc)
        else:
            pipes.add(proc)

        async def write(data):
            proc.stdin.write(data)
            await proc.stdin.drain()

        def close():
            try:
                proc.stdin.close()
            except Exception:
                pass

        sent: set = set()
        stdin_task = asyncio.ensure_future(self._pump_stdin(process, write, close, pgid, sent=sent))
        try:
            await asyncio.gather(self._pump_out(proc.stdout, process.stdout), self._pump_out(proc.stderr, process.stderr))
            return _as_signal(await proc.wait(), sent)
        finally:
            self._pipes.get(conn, set()).discard(proc)
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

        sent: set = set()
        stdin_task = asyncio.ensure_future(self._pump_stdin(process, write, close, pgid, resize, sent=sent))
        try:
            code = _as_signal(await proc.wait(), sent)
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
