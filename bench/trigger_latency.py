"""Trigger latency: webhook POST -> run container started, against the engine's own
create + start time, measured in the same run.

    python bench/trigger_latency.py [--runs 50]

Starts the real stack against a scratch data dir (daphne serving the API, the django-q2
cluster, the dispatcher loop) with the docker executor, then alternates, --runs times each:

(a) the engine alone: create + start of a container with the same image, command and
    hardening as a run container, timed from just before the create call;
(b) Fast-Flow: POST /api/webhooks/{id}/{key} to daphne on 127.0.0.1, timed from just
    before the request is sent;

both up to the engine's own `start` event for that container (docker events, timeNano),
so the two end at the same instant of the engine's clock. Each run is waited for until it
finishes, so runs never overlap. Prints JSON, then p50 and p95 of both, the dispatch
overhead (b - a), where (b)'s time goes (POST answered, dispatched, claimed by a worker,
container started), and the target: p50 overhead <= 100 ms.
"""

import argparse
import http.client
import json
import os
import queue
import shutil
import statistics
import threading
import time

from common import free_port, scratch, start, stop

SCRATCH = scratch("fastflow-bench-trigger-", FASTFLOW_EXECUTOR="docker")
PIPELINE, KEY = "bench_hook", "bench-webhook-key-0123456789"
LABEL = "org.fastflow.bench"


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class StartEvents(threading.Thread):
    """Follows the engine's `start` events; hands out (container labels, time in seconds)."""

    def __init__(self, api):
        super().__init__(daemon=True)
        self.api, self.events = api, queue.Queue()
        self.stream = api.events(decode=True, filters={"event": "start", "type": "container"})

    def run(self):
        try:
            for event in self.stream:
                labels = event.get("Actor", {}).get("Attributes", {})
                self.events.put((labels, event["timeNano"] / 1e9))
        except Exception:  # the stream is closed at the end
            pass

    def wait_for(self, match, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            labels, at = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if match(labels):
                return at


def engine_create_start(api, image, code_dir, events):
    """(a): the same container a run gets (see runs/executors/docker.py), created and started."""
    from django.conf import settings

    from runs.executors.docker import hosts_file

    binds = {str(code_dir): {"bind": "/pipeline", "mode": "ro"}}
    if settings.FASTFLOW_DOCKER_NETWORK == "none":
        binds[str(hosts_file())] = {"bind": "/etc/hosts", "mode": "ro"}
    host_config = api.create_host_config(
        binds=binds, tmpfs={"/tmp": "rw,nosuid,nodev,size=512m"},
        network_mode=settings.FASTFLOW_DOCKER_NETWORK, read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], pids_limit=settings.FASTFLOW_PIDS_LIMIT, init=True,
        mem_limit=2 * 1024**3, memswap_limit=2 * 1024**3)
    tag = f"baseline-{time.monotonic_ns()}"
    t0 = time.time()
    container = api.create_container(image, command=["python3", "main.py"], working_dir="/pipeline",
                                     user=settings.FASTFLOW_RUN_USER, labels={LABEL: tag},
                                     environment={"HOME": "/tmp", "PYTHONUNBUFFERED": "1"},
                                     host_config=host_config,
                                     network_disabled=settings.FASTFLOW_DOCKER_NETWORK == "none")["Id"]
    api.start(container)
    started = events.wait_for(lambda labels: labels.get(LABEL) == tag)
    api.wait(container, timeout=60)
    api.remove_container(container, force=True)
    return started - t0


def webhook_to_start(port, events, Run):
    """(b): POST the webhook, wait for its run's container to start, then for the run to end."""
    body = json.dumps({"params": {"bench": True}})
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t0 = time.time()
        conn.request("POST", f"/api/webhooks/{PIPELINE}/{KEY}", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answered = time.time()
        payload = json.loads(response.read() or b"{}")
        conn.close()
        if response.status == 429:  # the per-pipeline rate limit: wait it out, untimed
            time.sleep(float(response.getheader("Retry-After", "1")))
            continue
        if response.status != 202:
            raise SystemExit(f"webhook answered {response.status}: {payload}")
        break
    run_id = payload["run_id"]
    started = events.wait_for(lambda labels: labels.get("org.fastflow.run") == str(run_id)
                              and labels.get("org.fastflow.role") == "run")
    deadline = time.monotonic() + 120
    while True:
        run = Run.objects.get(pk=run_id)
        if run.is_final:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} still {run.status} after 120 s")
        time.sleep(0.01)
    if run.status != "succeeded":
        raise SystemExit(f"run {run_id} ended {run.status}: {run.message}")
    return {
        "total": started - t0, "answered": answered - t0,
        "dispatched": run.dispatched_at.timestamp() - t0, "claimed": run.started_at.timestamp() - t0,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    folder = SCRATCH / "pipelines" / PIPELINE
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("pass\n")
    (folder / "pipeline.json").write_text(json.dumps({"webhook_key": KEY}))

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from orchestrator.services import pipeline_sync
    from runs.executors.docker import DockerExecutor, _client
    from runs.models import Run

    pipeline_sync()
    if not DockerExecutor.available():
        raise SystemExit("no Docker engine answers: this benchmark needs one")
    api = _client()
    image = DockerExecutor().image_id()
    port = free_port()
    env = {**os.environ, "FASTFLOW_CHILD_PROCESS": "1", "DJANGO_SECRET_KEY": settings.SECRET_KEY}
    events = StartEvents(api)
    events.start()
    procs = {}
    try:
        procs = start(["web", "qcluster", "dispatcher"], env, SCRATCH, port)
        time.sleep(3)  # let the cluster come up
        for _ in range(3):  # warm-up: connections, page cache, the engine's image cache
            webhook_to_start(port, events, Run)
            engine_create_start(api, image, folder, events)
        a, b = [], []
        for _ in range(args.runs):  # interleaved, so noise hits both alike
            a.append(engine_create_start(api, image, folder, events))
            b.append(webhook_to_start(port, events, Run))
    finally:
        stop(procs)
        events.stream.close()
        shutil.rmtree(SCRATCH, ignore_errors=True)

    total = [x["total"] for x in b]
    med = statistics.median
    result = {
        "runs": args.runs,
        "a_engine_create_start_s": {"p50": med(a), "p95": pct(a, 0.95)},
        "b_webhook_to_container_start_s": {"p50": med(total), "p95": pct(total, 0.95)},
        "overhead_p50_ms": (med(total) - med(a)) * 1000,
        "overhead_p95_ms": (pct(total, 0.95) - pct(a, 0.95)) * 1000,
        "b_breakdown_p50_s": {stage: med(x[stage] for x in b) for stage in ("answered", "dispatched", "claimed")},
    }
    print(json.dumps(result, indent=2))
    ok = result["overhead_p50_ms"] <= 100
    print(f"\n{'measure':36} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'(a) engine create + start':36} {med(a) * 1000:8.0f} {pct(a, 0.95) * 1000:8.0f}")
    print(f"{'(b) webhook POST -> container start':36} {med(total) * 1000:8.0f} {pct(total, 0.95) * 1000:8.0f}")
    print(f"{'dispatch overhead (b) - (a)':36} {result['overhead_p50_ms']:8.0f} {result['overhead_p95_ms']:8.0f}")
    stages = result["b_breakdown_p50_s"]
    print(f"(b) p50 timeline: 202 answered {stages['answered'] * 1000:.0f} ms, dispatched "
          f"{stages['dispatched'] * 1000:.0f} ms, claimed by a worker {stages['claimed'] * 1000:.0f} ms, "
          f"container started {med(total) * 1000:.0f} ms")
    print(f"target: p50 overhead <= 100 ms: {'PASS' if ok else 'FAIL'} ({result['overhead_p50_ms']:.0f} ms)")


if __name__ == "__main__":
    main()
