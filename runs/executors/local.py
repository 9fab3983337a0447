"""Local executor: runs `python main.py` as a host process. It does NOT isolate pipelines
from the host (files, network, other processes); it exists for machines with no Docker
engine, and says so loudly in every run's log.

What it does enforce:
- its own process group per run, so timeout and cancel reach every child;
- the memory hard limit, through a memory cgroup (v2 or v1) where one can be created, else
  an RSS watchdog over the process group; either gives `oom_killed`;
- the same cached environments as docker, built with uv on the host (an empty venv when
  there is no requirements.txt, so pipelines never see the orchestrator's own packages).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from django.conf import settings

from runs import environments
from runs.executors.base import Executor, ExecutorError, Job, Outcome, exit_outcome, soft_limit_warnings

WARNING = "local executor: this run is NOT isolated (no container); set up Docker for isolation"


def _uv():
    from uv import find_uv_bin

    return find_uv_bin()


def _build_env(job: Job, path: Path):
    job.log.system("building the dependency environment (once per requirements.txt + interpreter)")
    env = {**os.environ, "UV_CACHE_DIR": str(environments.uv_cache_dir("local")), "UV_PYTHON_DOWNLOADS": "never"}
    if settings.FASTFLOW_CA_BUNDLE:
        env["SSL_CERT_FILE"] = settings.FASTFLOW_CA_BUNDLE
    steps = [[_uv(), "venv", "--quiet", str(path), "--python", sys.executable]]
    if job.requirements.strip():
        steps.append([_uv(), "pip", "install", "--python", str(path / "bin" / "python"),
                      "--compile-bytecode", "-r", str(job.code_dir / "requirements.txt")])
    for cmd in steps:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=job.code_dir)
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            job.log.write("sys", chunk)
        if proc.wait() != 0:
            raise ExecutorError(f"building the environment failed ({Path(cmd[0]).name} {cmd[1]} exited with "
                                f"{proc.returncode}); see the log", permanent=True)


class _MemoryCgroup:
    """A memory cgroup for one run, on v2 or v1; `create` returns None where not writable."""

    def __init__(self, path: Path, version: int):
        self.path, self.version = path, version

    @classmethod
    def create(cls, name, limit):
        candidates = []
        own = _own_cgroups()
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            candidates.append((Path("/sys/fs/cgroup") / own.get("", "/").lstrip("/") / name, 2))
        if Path("/sys/fs/cgroup/memory").is_dir():
            candidates.append((Path("/sys/fs/cgroup/memory") / own.get("memory", "/").lstrip("/") / name, 1))
        for path, version in candidates:
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                if version == 2:
                    (path / "memory.max").write_text(str(limit))
                    if (path / "memory.swap.max").exists():
                        (path / "memory.swap.max").write_text("0")
                else:
                    (path / "memory.limit_in_bytes").write_text(str(limit))
                    if (path / "memory.memsw.limit_in_bytes").exists():
                        (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
                return cls(path, version)
            except OSError:
                try:
                    path.rmdir()
                except OSError:
                    pass
        return None

    def enter(self):
        """Called in the child between fork and exec."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_killed(self):
        try:
            name = "memory.events" if self.version == 2 else "memory.oom_control"
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def peak(self):
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self):
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.02)


def _own_cgroups():
    result = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                result[c] = path
    except OSError:
        pass
    return result


def _group_rss(pgid):
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat, after state and ppid
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages (field 24)
        except (OSError, IndexError, ValueError):
            continue
    return total


class LocalExecutor(Executor):
    name = "local"

    def execute(self, job: Job) -> Outcome:
        job.log.system("WARNING: " + WARNING)
        t0 = time.monotonic()
        runtime = f"local:{sys.version}:{os.path.realpath(sys.executable)}"
        key = environments.env_key(job.requirements, runtime)
        env_path, _ = environments.ensure("local", key, lambda p: _build_env(job, p))
        setup_seconds = time.monotonic() - t0
        job.on_started(executor=self.name, image="", setup_seconds=round(setup_seconds, 3))
        tmp = tempfile.mkdtemp(prefix=f"fastflow-run-{job.run_id}-")
        cgroup = _MemoryCgroup.create(f"fastflow-run-{job.run_id}-{os.getpid()}", job.mem_hard_limit) \
            if job.mem_hard_limit else None
        try:
            return self._run(job, env_path, tmp, cgroup, setup_seconds)
        finally:
            if cgroup:
                cgroup.remove()
            shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, job, env_path, tmp, cgroup, setup_seconds):
        env = {"PATH": f"{env_path}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp,
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "VIRTUAL_ENV": str(env_path), **job.env}
        if settings.FASTFLOW_CA_BUNDLE:
            env.setdefault("SSL_CERT_FILE", settings.FASTFLOW_CA_BUNDLE)
        try:
            proc = subprocess.Popen(
                [str(env_path / "bin" / "python"), "main.py"], cwd=job.code_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=cgroup.enter if cgroup else None,
            )
        except OSError as exc:
            raise ExecutorError(f"cannot start the pipeline process: {exc}") from None
        job.on_started(container_id=f"pgid:{proc.pid}")  # lets the reconciler end an orphaned group
        started = time.monotonic()
        readers = [threading.Thread(target=self._pump, args=(proc.stdout, job, name), daemon=True)
                   for name in ("out",)] + [threading.Thread(target=self._pump, args=(proc.stderr, job, "err"), daemon=True)]
        for r in readers:
            r.start()
        result = {}
        waiter = threading.Thread(target=lambda: result.update(wait=os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        timed_out = cancelled = watchdog_oom = False
        peak_rss, next_cancel_check = 0, 0.0
        while waiter.is_alive():
            waiter.join(0.05)
            now = time.monotonic()
            if job.timeout and now - started > job.timeout:
                timed_out = True
                self._signal(proc.pid, signal.SIGKILL)
                break
            if now >= next_cancel_check:
                next_cancel_check = now + 0.5
                if job.cancelled():
                    cancelled = True
                    self._terminate(proc.pid, waiter)
                    break
            if job.mem_hard_limit and not cgroup:
                rss = _group_rss(proc.pid)
                peak_rss = max(peak_rss, rss)
                if rss > job.mem_hard_limit:
                    watchdog_oom = True
                    self._signal(proc.pid, signal.SIGKILL)
                    break
        waiter.join()
        self._signal(proc.pid, signal.SIGKILL)  # children left in the group
        for r in readers:
            r.join(10)
        _, status, usage = result["wait"]
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        oom = watchdog_oom or bool(cgroup and cgroup.oom_killed())
        outcome = exit_outcome(code, oom=oom, timed_out=timed_out, cancelled=cancelled, timeout=job.timeout)
        duration = max(time.monotonic() - started, 1e-3)
        outcome.setup_seconds = round(setup_seconds, 3)
        outcome.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 3)
        outcome.peak_memory_bytes = (cgroup.peak() if cgroup else None) or max(peak_rss, usage.ru_maxrss * 1024)
        outcome.peak_cpu_cores = outcome.cpu_seconds / duration
        outcome.warnings = soft_limit_warnings(job, outcome)
        return outcome

    @staticmethod
    def _pump(pipe, job, stream):
        for chunk in iter(lambda: pipe.read1(65536), b""):
            job.log.write(stream, chunk)
        pipe.close()

    @staticmethod
    def _signal(pgid, sig):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _terminate(self, pgid, waiter, grace=5):
        self._signal(pgid, signal.SIGTERM)
        waiter.join(grace)
        if waiter.is_alive():
            self._signal(pgid, signal.SIGKILL)
