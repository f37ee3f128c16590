"""The sandbox one submission's kernel runs in: bubblewrap (`bwrap`, the sandbox Flatpak uses).

What the kernel sees and may do:
- a fresh root holding, read-only, only what Python needs: /usr and /etc, the Python installation,
  the virtual environment and the `olm_edu` package. Nothing else of the machine is there: not the
  course (so not `solutions/`), not the grader's job folder, results, gradebook or other
  submissions, not the grader's environment variables (`--clearenv`);
- one writable home, `/home/student` (a size-limited tmpfs, the notebook's working folder), a
  private size-limited `/tmp` and `/dev/shm`, and the channel folder shared with the grader (the
  kernel's sockets and the request/response files of out-of-process judging, see `remote`);
- a new network namespace (loopback only: the kernel talks to the grader over Unix sockets), new
  PID, IPC and UTS namespaces. PID namespace + `--die-with-parent`: when the grader stops the
  sandbox, every process the submission started dies with it, detached or not;
- its own unprivileged user id (`setpriv`, no capabilities, no new privileges), so that
  RLIMIT_NPROC applies to it (root ignores that limit) and nothing outside can be written even
  where a read-only bind would not stop root.

Limits: RLIMIT_NPROC (processes and threads of that uid), RLIMIT_AS (address space per process, a
backstop; the grader's watchdog sums the resident memory of the whole tree), RLIMIT_FSIZE (one
file's size), the tmpfs sizes (bytes written in total), and the wall-clock limit, enforced by
the grader. cgroups are not used: on hosts with cgroup v1 only (like CI) they are not available
to an unprivileged sandbox; the watchdog does their work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import olm_edu

__all__ = ["SandboxLimits", "SandboxUnavailable", "sandbox_problem", "sandbox_command", "thread_env", "HOME", "INSTALL_HINT"]

HOME = "/home/student"
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`) "
                "and make sure user namespaces are enabled, or pass --no-sandbox to grade without isolation (unsafe: "
                "student code then runs as you, can read solutions/ and change grades)")


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create the namespaces the sandbox needs."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandbox may use (see the module docstring for how each is enforced)."""

    processes: int = 256  # processes + threads of the sandbox's user (torch starts a thread per core)
    address_space_mb: int = 16384  # per process; torch reserves far more address space than it uses
    file_mb: int = 64  # the largest single file
    home_mb: int = 256  # /home/student (the working folder)
    tmp_mb: int = 128  # /tmp and /dev/shm, each


def _tools() -> dict[str, str | None]:
    return {name: shutil.which(name) for name in ("bwrap", "setpriv", "prlimit")}


def sandbox_problem() -> str | None:
    """None when the sandbox works here; otherwise what is wrong and how to fix it."""
    tools = _tools()
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        return f"{', '.join(missing)} not found: {INSTALL_HINT}"
    probe = [tools["bwrap"], "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent",
             "--ro-bind", "/", "/", "--proc", "/proc", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap could not run ({error}): {INSTALL_HINT}"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces here ({done.stderr.strip()[:300]}): {INSTALL_HINT}"
    return None


def _ancestors(path: Path) -> list[Path]:
    """/a/b/c -> [/a, /a/b] (the folders bwrap must create, world-readable, before binding /a/b/c)."""
    return list(reversed(path.parents[:-1])) if len(path.parts) > 2 else []


def _python_paths() -> list[Path]:
    """The folders the kernel's Python needs: the interpreter's installation and the environment."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix)}
    executable = Path(sys.executable)
    paths.add(executable.parent.parent)
    paths.add(executable.resolve().parent.parent)
    return sorted(paths)


def sandbox_command(command: list[str], *, channel: Path, uid: int, limits: SandboxLimits,
                    env: dict[str, str]) -> list[str]:
    """`command` wrapped to run in the sandbox, as user `uid`, with `channel` shared read-write.

    `env` is the whole environment the command gets (the grader's own is cleared).
    """
    tools = _tools()
    if tools["bwrap"] is None or tools["setpriv"] is None or tools["prlimit"] is None:
        raise SandboxUnavailable(sandbox_problem() or INSTALL_HINT)
    package = Path(olm_edu.__file__).resolve().parent
    read_only = [*_python_paths(), package]
    mb = 2**20
    root = os.geteuid() == 0  # only root can give the sandbox a user id of its own (see `sandbox_uid`)
    nproc = [f"--nproc={limits.processes}"] if root else []  # else the watchdog counts processes alone
    args = [tools["prlimit"], *nproc, f"--as={limits.address_space_mb * mb}",
            f"--fsize={limits.file_mb * mb}", "--core=0", "--",
            tools["bwrap"], "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox",
            "--tmpfs", "/", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        target = Path("/", link)
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            args += ["--ro-bind", str(target), str(target)]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/tmp",
             "--perms", "1777", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/dev/shm",
             "--perms", "0755", "--dir", "/home",
             "--perms", "0777", "--size", str(limits.home_mb * mb), "--tmpfs", HOME]
    made: set[Path] = {Path("/usr"), Path("/etc"), Path("/tmp"), Path("/home"), Path("/dev")}
    for path in [*read_only, channel]:  # after /tmp's tmpfs, which would hide a channel under /tmp
        for folder in _ancestors(path):
            if folder not in made and not str(folder).startswith(("/usr/", "/etc/")):
                args += ["--perms", "0755", "--dir", str(folder)]
                made.add(folder)
    for path in read_only:
        if not str(path).startswith(("/usr/", "/etc/")) and path != Path("/usr"):
            args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(channel), str(channel),
             "--chdir", HOME, "--clearenv"]
    if not root:
        args += ["--unshare-user", "--disable-userns"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    args.append("--")
    if root:
        args += [tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs"]
    return args + command


def sandbox_uid(worker_pid: int | None = None) -> int:
    """A user id no other running sandbox has: RLIMIT_NPROC counts per user id, so two sandboxes
    sharing one would share their process budget. Derived from the worker's process id."""
    return 200_000 + (os.getpid() if worker_pid is None else worker_pid)


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment variables that size torch's (OpenMP's) thread pool; none when `threads` is None.
    N submissions at once, each with a pool as large as the machine, would fight over the cores."""
    return {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
