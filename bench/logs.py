"""Live log delivery: a run that prints lines as fast as it can, watched over websockets.

    python bench/logs.py [--lines 100000] [--factor 10] [--viewers 3] [--executor auto]

For each log size (N lines, then N x factor lines), against a scratch data dir:
1. start the stack as `up` does: daphne (the web process), the q2 cluster, the dispatcher;
2. queue a run of `bench_logs` (held back from the dispatcher), connect the viewers (one
   process each, `websockets` client, an admin session cookie), then hand the run to the
   workers. The pipeline prints N lines `<seq> <time.time() at print>`, as fast as it can;
3. each viewer checks every line arrives once and in order, and times print -> receipt;
4. once the run is final, one more viewer connects from offset 0 (a late viewer: the
   whole log as backlog), then a stalled one (connects, reads nothing for 3 s, then reads
   it all: the web process must not buffer the log for it);
5. read the web process's peak RSS (VmHWM in /proc/<pid>/status), then stop everything.
The web process is a fresh one for each size, so its peak belongs to that size alone.

Prints JSON, then a table with the targets: 0 lost, 0 duplicated (every viewer, late and
stalled ones included), p95 print -> receipt <= 500 ms and >= 20,000 lines/s to each live viewer, and a
web process whose peak RSS does not grow with the log (10x the lines: at most +10%).
Uses the docker executor when an engine answers, else the local one.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from common import free_port, scratch, start, stop

# the 10x log is bigger than the default cap
SCRATCH = scratch("fastflow-bench-logs-", FASTFLOW_LOG_MAX_BYTES=4 * 2**30, FASTFLOW_WORKERS=2)

PIPELINE = """import os, sys, time
write, now = sys.stdout.write, time.time
for i in range(int(os.environ["BENCH_LINES"])):
    write(f"{i} {now():.6f}\\n")
"""
RSS_GROWTH_LIMIT = 0.10


# --- a viewer (its own process) -------------------------------------------------------------

def _p95(values):
    return sorted(values)[int(0.95 * (len(values) - 1))] * 1000 if values else None


def viewer(url, cookie, expected, ready, go, results, stall=0.0):
    """Connects, says ready, keeps each message with its receipt time until the status
    message, then checks the lines. Parsing waits until the end so that the harness does
    not take CPU from the system it measures while the run goes. With `stall`, it reads
    nothing for that long first (a slow viewer: the server must not buffer the log)."""
    import websockets.asyncio.client as ws

    async def watch():
        frames = []
        status = None
        async with ws.connect(url, additional_headers={"Cookie": cookie}, compression=None, max_size=None,
                              proxy=None, ping_interval=None) as conn:
            connected = time.time()
            ready.put(os.getpid())
            if stall:
                await asyncio.sleep(stall)
            async for raw in conn:
                now = time.time()
                if raw.startswith('{"type": "status"'):
                    status = json.loads(raw)["status"]
                    break
                frames.append((now, raw))
        cpu_live = time.process_time()
        return check(frames, expected, status, connected, cpu_live)

    go.wait(120)
    try:
        results.put(asyncio.run(watch()))
    except Exception as exc:  # reported by the main process, with the web process's log
        results.put({"error": repr(exc)})


def check(frames, expected, status, connected, cpu_live):
    seen = bytearray(expected)
    received = dups = disorder = 0
    last_seq = -1
    latencies, to_file, to_viewer = [], [], []
    offset = 0
    for now, raw in frames:
        msg = json.loads(raw)
        assert msg["type"] == "log" and msg["offset"] == offset + len(msg["data"].encode()), "offsets"
        offset = msg["offset"]
        for line in msg["data"].split("\n")[:-1]:
            stamp, stream, rest = line.split(" ", 2)
            if stream != "out":
                continue
            seq, printed = rest.split(" ")
            seq = int(seq)
            received += 1
            if seq % 97 == 0:  # a sample: where the time goes, print -> log file -> viewer
                written = datetime.fromisoformat(stamp).timestamp()
                to_file.append(written - float(printed))
                to_viewer.append(now - written)
            if seen[seq]:
                dups += 1
            seen[seq] = 1
            if seq < last_seq:
                disorder += 1
            last_seq = seq
            latencies.append(now - float(printed))
    latencies.sort()

    def pick(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None

    first, last = (frames[0][0], frames[-1][0]) if frames else (None, None)
    span = (last - first) if frames and last > first else None
    return {
        "status": status, "received": received, "lost": expected - sum(seen), "duplicated": dups,
        "out_of_order": disorder, "messages": len(frames), "p50_ms": pick(0.50), "p95_ms": pick(0.95),
        "max_ms": pick(1.0), "p95_print_to_file_ms": _p95(to_file), "p95_file_to_viewer_ms": _p95(to_viewer),
        "lines_per_s": received / span if span else None,
        "connect_to_last_s": (last - connected) if last else None,
        "cpu_s_while_live": round(cpu_live, 3),
    }


# --- the stack ------------------------------------------------------------------------------

def vm(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def scenario(lines, n_viewers, env, cookie, executor):
    from django.db import connections
    from django_q.tasks import async_task

    from orchestrator.models import Pipeline
    from runs.services import run_trigger

    port = free_port()
    procs = start(["web", "qcluster", "dispatcher"], env, SCRATCH, port)
    ctx = mp.get_context("fork")  # viewers use no Django: a fork is cheap and re-imports nothing
    try:
        time.sleep(2)  # let the q2 cluster come up
        web_idle_rss = vm(procs["web"].pid, "VmRSS")
        web_cpu0 = cpu_seconds(procs["web"].pid)
        # Born dispatched: the dispatcher leaves it alone until the viewers are connected.
        run = run_trigger(pipeline=Pipeline.objects.get(pk="bench_logs"), trigger="api",
                          env={"BENCH_LINES": str(lines)}, dispatch=False)
        url = f"ws://127.0.0.1:{port}/ws/runs/{run.pk}/logs/"
        ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
        viewers = [ctx.Process(target=viewer, args=(url, cookie, lines, ready, go, results)) for _ in range(n_viewers)]
        connections.close_all()
        for v in viewers:
            v.start()
        go.set()
        for _ in viewers:
            ready.get(timeout=60)
        t0 = time.time()
        async_task("runs.tasks.execute_run", run.pk, task_name=f"run-{run.pk}", group="runs")
        live = [results.get(timeout=600) for _ in viewers]
        if any("error" in v for v in live):
            raise SystemExit(f"a viewer failed: {live}\n--- web.log\n" + (SCRATCH / "web.log").read_text()[-5000:])
        for v in viewers:
            v.join(30)
        run.refresh_from_db()
        if run.status != "succeeded":
            raise SystemExit(f"run {run.pk} ended {run.status}: {run.message}\n" + run.log_path.read_text()[-2000:])
        printing = run.finished_at.timestamp() - t0

        late_go, late_results = ctx.Event(), ctx.Queue()
        connections.close_all()
        late = ctx.Process(target=viewer, args=(url, cookie, lines, ctx.Queue(), late_go, late_results))
        late.start()
        late_go.set()
        late_result = late_results.get(timeout=600)
        if "error" in late_result:
            raise SystemExit(f"the late viewer failed: {late_result}\n--- web.log\n"
                             + (SCRATCH / "web.log").read_text()[-5000:])
        late.join(30)
        late_result["lines_per_s"] = late_result["received"] / late_result["connect_to_last_s"]

        # A stalled viewer of the whole log: reads nothing for 3 s, then everything.
        rss_before_stall = vm(procs["web"].pid, "VmRSS")
        stall_results = ctx.Queue()
        stalled = ctx.Process(target=viewer, args=(url, cookie, lines, ctx.Queue(), late_go, stall_results, 3.0))
        stalled.start()
        time.sleep(2.5)
        rss_while_stalled = vm(procs["web"].pid, "VmRSS")
        stall_result = stall_results.get(timeout=600)
        stalled.join(30)
        if "error" in stall_result:
            raise SystemExit(f"the stalled viewer failed: {stall_result}")
        stall_result["web_rss_growth_while_stalled_bytes"] = rss_while_stalled - rss_before_stall
        web_peak_rss = vm(procs["web"].pid, "VmHWM")
        web_cpu = cpu_seconds(procs["web"].pid) - web_cpu0
    finally:
        stop(procs)
    return {
        "lines": lines, "executor": executor, "log_bytes": run.log_path.stat().st_size,
        "queue_to_finished_s": round(printing, 3), "viewers": live, "late_viewer": late_result,
        "stalled_viewer": stall_result,
        "web_idle_rss_bytes": web_idle_rss, "web_peak_rss_bytes": web_peak_rss, "web_cpu_s": round(web_cpu, 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=3)
    parser.add_argument("--executor", choices=["auto", "docker", "local"], default="auto")
    args = parser.parse_args()

    (SCRATCH / "pipelines" / "bench_logs").mkdir(parents=True)
    (SCRATCH / "pipelines" / "bench_logs" / "main.py").write_text(PIPELINE)
    (SCRATCH / "pipelines" / "bench_logs" / "pipeline.json").write_text('{"timeout": 0}')

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from orchestrator.services import pipeline_sync
    from runs.executors import resolve_kind

    call_command("migrate", verbosity=0)
    pipeline_sync()
    executor = resolve_kind(None if args.executor == "auto" else args.executor)
    user = get_user_model().objects.create_superuser("bench", password="bench-password-1")
    client = Client()
    client.force_login(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    env = {**os.environ, "FASTFLOW_CHILD_PROCESS": "1", "DJANGO_SECRET_KEY": settings.SECRET_KEY,
           "FASTFLOW_EXECUTOR": executor}
    try:
        sizes = [scenario(n, args.viewers, env, cookie, executor) for n in (args.lines, args.lines * args.factor)]
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)

    small, big = sizes
    growth = big["web_peak_rss_bytes"] / small["web_peak_rss_bytes"] - 1
    print(json.dumps({"sizes": sizes, "web_peak_rss_growth": round(growth, 4)}, indent=2))

    rows = []
    for size in sizes:
        tag = f"{size['lines']:,} lines"
        every = size["viewers"] + [size["late_viewer"], size["stalled_viewer"]]
        lost, dup = sum(v["lost"] for v in every), sum(v["duplicated"] for v in every)
        disorder = sum(v["out_of_order"] for v in every)
        p95 = max(v["p95_ms"] for v in size["viewers"])
        rate = min(v["lines_per_s"] for v in size["viewers"])
        rows += [
            (f"{tag}: lost (all viewers)", f"{lost}", "0", lost == 0),
            (f"{tag}: duplicated", f"{dup}", "0", dup == 0),
            (f"{tag}: out of order", f"{disorder}", "0", disorder == 0),
            (f"{tag}: p95 print->receipt ms", f"{p95:.0f}", "<= 500", p95 <= 500),
            (f"{tag}: lines/s, slowest viewer", f"{rate:,.0f}", ">= 20,000", rate >= 20_000),
            (f"{tag}: late viewer lines/s", f"{size['late_viewer']['lines_per_s']:,.0f}", "(info)", None),
            (f"{tag}: web RSS growth, stalled viewer MiB",
             f"{size['stalled_viewer']['web_rss_growth_while_stalled_bytes'] / 2**20:+.1f}", "(info)", None),
            (f"{tag}: web peak RSS MiB", f"{size['web_peak_rss_bytes'] / 2**20:.1f}", "(info)", None),
        ]
    rows.append((f"web peak RSS growth at {args.factor}x log", f"{growth * 100:+.1f}%",
                 f"<= +{RSS_GROWTH_LIMIT * 100:.0f}%", growth <= RSS_GROWTH_LIMIT))
    print(f"\nexecutor {executor}, {args.viewers} live viewers + 1 late + 1 stalled viewer per size")
    print(f"{'measure':46} {'value':>12} {'target':>10}  result")
    for name, value, target, ok in rows:
        print(f"{name:46} {value:>12} {target:>10}  {'' if ok is None else 'PASS' if ok else 'FAIL'}")
    for size in sizes:
        v = size["viewers"]
        print(f"{size['lines']:,} lines ({size['log_bytes'] / 2**20:.1f} MiB log): per viewer p50/p95 ms "
              + ", ".join(f"{x['p50_ms']:.0f}/{x['p95_ms']:.0f}" for x in v)
              + "; lines/s " + ", ".join(f"{x['lines_per_s']:,.0f}" for x in v)
              + "; p95 print->file / file->viewer ms " + ", ".join(
                  f"{x['p95_print_to_file_ms']:.0f}/{x['p95_file_to_viewer_ms']:.0f}" for x in v)
              + f"; queue -> finished {size['queue_to_finished_s']:.2f} s")
    sys.exit(0 if all(ok is not False for *_, ok in rows) else 1)


if __name__ == "__main__":
    main()
