"""Docker executor: each run in a fresh, locked-down container.

Steps of `execute`:
1. look up the runner image (a missing image is a permanent error saying how to build it);
2. when the pipeline has requirements, make sure its cached environment exists: built once
   in a builder container (network on, shared uv cache, --compile-bytecode), then mounted
   read-only at the same path by every later run;
3. create the run container (code and env read-only, tmpfs /tmp, non-root, read-only root,
   no capabilities, no-new-privileges, pids limit, memory = memory+swap, nano_cpus),
   attach to its output *before* starting it so no line is missed, and start it;
4. follow logs in a thread and stats in another, while the calling thread enforces the
   timeout and watches for a cancel;
5. read the exit code and the engine's OOMKilled flag; always remove the container.
"""

import logging
import os
import threading
import time

import docker
from django.conf import settings
from docker import errors as docker_errors
from requests import exceptions as requests_errors

from runs import environments
from runs.executors.base import Executor, ExecutorError, Job, Outcome, exit_outcome, soft_limit_warnings

log = logging.getLogger("fastflow.executors.docker")

CODE_DIR = "/pipeline"
ENV_DIR = "/opt/fastflow/env"
CACHE_DIR = "/opt/fastflow/uv-cache"
CA_PATH = "/etc/ssl/certs/fastflow-ca.crt"
LABEL_RUN = "org.fastflow.run"
LABEL_PIPELINE = "org.fastflow.pipeline"
LABEL_INSTANCE = "org.fastflow.instance"
ENGINE_ERRORS = (docker_errors.DockerException, requests_errors.RequestException, ConnectionError)


# The engine writes this /etc/hosts into containers it networks (mode "none" included), but
# not into one started with networking disabled: without it "localhost" does not resolve.
HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def hosts_file():
    """A read-only /etc/hosts for run containers, kept in the data dir (written once)."""
    path = settings.FASTFLOW_DATA_DIR / "runner" / "hosts"
    try:
        if path.read_text() == HOSTS:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"hosts.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(HOSTS)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path


def _instance():
    from runs.models import instance_id

    return instance_id()


def _client(timeout=120):
    try:
        return docker.APIClient(**docker.utils.kwargs_from_env(), timeout=timeout)
    except docker_errors.DockerException as exc:
        raise ExecutorError(f"cannot reach the Docker engine: {exc}") from None


class DockerExecutor(Executor):
    name = "docker"

    @classmethod
    def available(cls):
        try:
            return bool(_client(timeout=3).ping())
        except Exception:
            return False

    def __init__(self):
        self.api = _client()

    # --- image and environment -------------------------------------------------------------
    def image_id(self):
        ref = settings.FASTFLOW_RUNNER_IMAGE
        try:
            return self.api.inspect_image(ref)["Id"]
        except docker_errors.ImageNotFound:
            raise ExecutorError(
                f"runner image {ref!r} not found: build it with `deploy/runner/build-offline.sh {ref}` "
                f"(no registry needed) or `docker build -t {ref} deploy/runner`",
                permanent=True,
            ) from None
        except ENGINE_ERRORS as exc:
            raise ExecutorError(f"Docker engine error while looking up the runner image: {exc}") from None

    def _ca_env_and_mounts(self):
        if not settings.FASTFLOW_CA_BUNDLE:
            return {}, {}
        return ({"SSL_CERT_FILE": CA_PATH, "REQUESTS_CA_BUNDLE": CA_PATH, "PIP_CERT": CA_PATH},
                {settings.FASTFLOW_CA_BUNDLE: {"bind": CA_PATH, "mode": "ro"}})

    def _ensure_env(self, job: Job, image_id: str):
        key = environments.env_key(job.requirements, f"docker:{image_id}")
        path, built = environments.ensure("docker", key, lambda p: self._build_env(job, image_id, p))
        return path, built

    def _build_env(self, job: Job, image_id: str, path):
        job.log.system("building the dependency environment (once per requirements.txt + image)")
        cache = environments.uv_cache_dir("docker")
        uid, gid = (int(x) for x in settings.FASTFLOW_RUN_USER.split(":"))
        for folder in (path, cache):
            try:
                os.chown(folder, uid, gid)
            except PermissionError:
                pass  # not root: the run user is the host user already
        ca_env, ca_mounts = self._ca_env_and_mounts()
        script = (
            f"uv venv --quiet {ENV_DIR} --python /usr/bin/python3 && "
            f"uv pip install --python {ENV_DIR}/bin/python --compile-bytecode -r {CODE_DIR}/requirements.txt"
        )
        host_config = self.api.create_host_config(
            binds={str(job.code_dir): {"bind": CODE_DIR, "mode": "ro"},
                   str(path): {"bind": ENV_DIR, "mode": "rw"},
                   str(cache): {"bind": CACHE_DIR, "mode": "rw"}, **ca_mounts},
            tmpfs={"/tmp": "rw,nosuid,nodev,size=1g"},
            network_mode=settings.FASTFLOW_BUILD_NETWORK,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            pids_limit=settings.FASTFLOW_PIDS_LIMIT, init=True,
        )
        container = self.api.create_container(
            image_id, command=["sh", "-c", script], user=settings.FASTFLOW_RUN_USER,
            environment={"UV_CACHE_DIR": CACHE_DIR, "HOME": "/tmp", "UV_LINK_MODE": "hardlink",
                         "UV_PYTHON_DOWNLOADS": "never", **ca_env},
            labels={LABEL_RUN: str(job.run_id), LABEL_INSTANCE: _instance(), "org.fastflow.role": "builder"},
            host_config=host_config,
        )["Id"]
        try:
            stream = self.api.attach(container, stream=True, logs=True, demux=True)
            self.api.start(container)
            for out, err in stream:
                if out:
                    job.log.write("sys", out)
                if err:
                    job.log.write("sys", err)
            code = self.api.wait(container, timeout=3600)["StatusCode"]
        finally:
            self._remove(container)
        if code != 0:
            raise ExecutorError(f"building the environment failed (uv exited with {code}); see the log", permanent=True)

    # --- the run -----------------------------------------------------------------------------
    def execute(self, job: Job) -> Outcome:
        try:
            return self._execute(job)
        except ExecutorError:
            raise
        except ENGINE_ERRORS as exc:
            raise ExecutorError(f"Docker engine error: {exc}") from None

    def _execute(self, job: Job) -> Outcome:
        t0 = time.monotonic()
        image_id = self.image_id()
        job.on_started(image=settings.FASTFLOW_RUNNER_IMAGE, executor=self.name)
        binds = {str(job.code_dir): {"bind": CODE_DIR, "mode": "ro"}}
        python = "python3"
        if job.requirements.strip():
            env_path, _ = self._ensure_env(job, image_id)
            binds[str(env_path)] = {"bind": ENV_DIR, "mode": "ro"}
            python = f"{ENV_DIR}/bin/python"
        setup_seconds = time.monotonic() - t0
        ca_env, ca_mounts = self._ca_env_and_mounts()
        binds.update(ca_mounts)
        network = job.network_mode or settings.FASTFLOW_DOCKER_NETWORK
        # Network "none" as the engine's NetworkDisabled: the runtime still gives the
        # container its own network namespace with only loopback, but the engine skips its
        # network sandbox and the prestart hook that sets it up (a re-exec of the engine
        # binary), which cost ~120 ms of every container start. It then writes no
        # /etc/hosts, so the container gets ours.
        no_network = network == "none"
        if no_network:
            binds[str(hosts_file())] = {"bind": "/etc/hosts", "mode": "ro"}
        host_config = self.api.create_host_config(
            binds=binds,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=512m"},
            network_mode=network,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            pids_limit=settings.FASTFLOW_PIDS_LIMIT, init=True,
            mem_limit=job.mem_hard_limit or None,
            memswap_limit=job.mem_hard_limit or None,
            nano_cpus=int(job.cpu_hard_limit * 1e9) if job.cpu_hard_limit else None,
        )
        env = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **ca_env, **job.env}
        container = self.api.create_container(
            image_id, command=[python, "main.py"], working_dir=CODE_DIR,
            user=settings.FASTFLOW_RUN_USER, environment=env,
            labels={LABEL_RUN: str(job.run_id), LABEL_PIPELINE: job.pipeline_id, LABEL_INSTANCE: _instance(),
                    "org.fastflow.role": "run"},
            host_config=host_config,
            network_disabled=no_network,
        )["Id"]
        try:
            job.on_started(container_id=container[:64], setup_seconds=round(setup_seconds, 3))
            return self._follow(job, container, setup_seconds)
        finally:
            self._remove(container)

    def _follow(self, job: Job, container: str, setup_seconds: float, *, start=True, elapsed=0.0) -> Outcome:
        if start:  # attached before it starts: nothing can be missed
            streams = [(self.api.attach(container, stream=True, logs=True, demux=True), None)]
            self.api.start(container)
        else:  # re-attaching: follow the engine's log of each stream (a replay, then live)
            streams = [(self.api.logs(container, stdout=(name == "out"), stderr=(name == "err"), stream=True,
                                      follow=True), name) for name in ("out", "err")]
        started = time.monotonic() - elapsed

        def pump(stream, name):
            try:
                for chunk in stream:
                    if name:
                        job.log.write(name, chunk)
                        continue
                    out, err = chunk
                    if out:
                        job.log.write("out", out)
                    if err:
                        job.log.write("err", err)
            except ENGINE_ERRORS:
                pass

        readers = [threading.Thread(target=pump, args=pair, name=f"logs-{job.run_id}", daemon=True) for pair in streams]
        for r in readers:
            r.start()
        reader = readers[0]
        sampler = _Sampler(self.api, container)
        sampler.start()
        timed_out = cancelled = False
        next_cancel_check = 0.0
        while reader.is_alive():
            reader.join(0.1)
            now = time.monotonic()
            if job.timeout and now - started > job.timeout:
                timed_out = True
                self._kill(container)
                break
            if now >= next_cancel_check:
                next_cancel_check = now + 0.5
                if job.cancelled():
                    cancelled = True
                    self.api.stop(container, timeout=5)
                    break
        code = self.api.wait(container, timeout=60)["StatusCode"]
        for r in readers:
            r.join(10)
        state = self.api.inspect_container(container)["State"]
        outcome = exit_outcome(code, oom=bool(state.get("OOMKilled")), timed_out=timed_out,
                               cancelled=cancelled, timeout=job.timeout)
        if outcome.reason == "exit_code" and code == 137:
            outcome.message = "exited with code 137 (SIGKILL; the engine reports no out-of-memory kill)"
        outcome.setup_seconds = round(setup_seconds, 3)
        sampler.stop()
        outcome.peak_memory_bytes = sampler.peak_memory or None
        outcome.cpu_seconds = round(sampler.cpu_ns / 1e9, 3) if sampler.cpu_ns else None
        outcome.peak_cpu_cores = sampler.peak_cores or None
        outcome.warnings = soft_limit_warnings(job, outcome)
        return outcome

    # --- recovery (used by the reconciler) --------------------------------------------------
    def container_state(self, container_id):
        """The engine's State of a container, or None when it no longer exists."""
        try:
            return self.api.inspect_container(container_id)["State"]
        except docker_errors.NotFound:
            return None

    def reattach(self, job: Job, container_id: str, *, elapsed: float, seen: dict) -> Outcome:
        """Follow a container whose worker died: the engine replays its output from the
        start, so the lines already in the log file (`seen`, per stream) are skipped."""
        job.log = _Resume(job.log, seen)
        try:
            return self._follow(job, container_id, setup_seconds=0.0, start=False, elapsed=elapsed)
        except ENGINE_ERRORS as exc:
            raise ExecutorError(f"Docker engine error: {exc}") from None
        finally:
            self._remove(container_id)

    def remove(self, container_id):
        self._remove(container_id)

    def remove_orphans(self):
        """Remove this installation's containers whose run is final or unknown."""
        from runs.models import FINAL, Run

        removed = []
        for c in self.api.containers(all=True, filters={"label": [LABEL_RUN, f"{LABEL_INSTANCE}={_instance()}"]}):
            run_id = (c.get("Labels") or {}).get(LABEL_RUN, "")
            status = Run.objects.filter(pk=int(run_id)).values_list("status", flat=True).first() \
                if run_id.isdigit() else None
            if status is None or status in FINAL:
                self._remove(c["Id"])
                removed.append(c["Id"][:12])
        return removed

    def _kill(self, container):
        try:
            self.api.kill(container)
        except docker_errors.APIError:
            pass  # already gone

    def _remove(self, container):
        try:
            self.api.remove_container(container, force=True, v=True)
        except docker_errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("could not remove container %s: %s", container[:12], exc)


class _Resume:
    """A log writer that drops the first N complete lines of each stream (already written
    before the worker died), then passes everything through."""

    def __init__(self, log, seen):
        self._log, self._skip, self._buf = log, dict(seen), {}

    def write(self, stream, data):
        n = self._skip.get(stream, 0)
        if n <= 0:
            return self._log.write(stream, data)
        data = self._buf.pop(stream, b"") + data
        while n > 0:
            cut = data.find(b"\n")
            if cut < 0:
                self._buf[stream], self._skip[stream] = data, n
                return None
            data, n = data[cut + 1:], n - 1
        self._skip[stream] = 0
        if data:
            self._log.write(stream, data)
        return None

    def __getattr__(self, name):
        return getattr(self._log, name)


class _Sampler(threading.Thread):
    """Follows the engine's stats stream: peak memory, CPU time, peak CPU cores."""

    def __init__(self, api, container):
        super().__init__(daemon=True, name=f"stats-{container[:12]}")
        self.api, self.container = api, container
        self.peak_memory = 0
        self.cpu_ns = 0
        self.peak_cores = 0.0
        self._stopped = False

    def run(self):
        try:
            for sample in self.api.stats(self.container, stream=True, decode=True):
                if self._stopped:
                    break
                self._take(sample)
        except Exception:
            pass  # the container is gone; keep what was sampled

    def _take(self, sample):
        mem = sample.get("memory_stats") or {}
        stats = mem.get("stats") or {}
        usage = mem.get("max_usage") or mem.get("usage") or 0
        if not mem.get("max_usage"):
            usage -= stats.get("inactive_file", stats.get("total_inactive_file", 0))
        self.peak_memory = max(self.peak_memory, usage)
        cpu = (sample.get("cpu_stats") or {}).get("cpu_usage", {}).get("total_usage") or 0
        pre = (sample.get("precpu_stats") or {}).get("cpu_usage", {}).get("total_usage") or 0
        self.cpu_ns = max(self.cpu_ns, cpu)
        sys_now = (sample.get("cpu_stats") or {}).get("system_cpu_usage") or 0
        sys_pre = (sample.get("precpu_stats") or {}).get("system_cpu_usage") or 0
        online = (sample.get("cpu_stats") or {}).get("online_cpus") or 1
        if pre and sys_now > sys_pre:
            self.peak_cores = max(self.peak_cores, (cpu - pre) / (sys_now - sys_pre) * online)

    def stop(self):
        self._stopped = True
