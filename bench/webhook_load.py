"""Webhook load: 1,000 POSTs at 50 concurrent to a real daphne on loopback.

    python bench/webhook_load.py [--requests 1000] [--concurrency 50] [--database sqlite|postgres|both]

Checks: zero 5xx responses, and exactly one run row for each 202 (counted in the database).
Prints p50/p95 response times per database and writes them to bench/results/webhook_load.json.
Workers are not started: the point is the web tier and the database, not the runs.
The web server pools its PostgreSQL connections as `up` starts it (BENCH_DB_POOL=0 to compare
without: 54 vs 66 requests/s here).
PostgreSQL: DATABASE_URL of a server this machine reaches (default postgres://postgres@127.0.0.1:5432/fastflow_bench).
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, free_port, start, stop

KEY = "load-test-key-123"


def one_database(kind, n, concurrency):
    scratch = Path(tempfile.mkdtemp(prefix="fastflow-load-"))
    pipelines = scratch / "pipelines"
    (pipelines / "hook").mkdir(parents=True)
    (pipelines / "hook" / "main.py").write_text("print('hooked')\n")
    (pipelines / "hook" / "pipeline.json").write_text(json.dumps({"webhook_key": KEY}))
    env = {**os.environ, "FASTFLOW_DATA_DIR": str(scratch / "data"), "FASTFLOW_PIPELINES_DIR": str(pipelines),
           "FASTFLOW_WEBHOOK_RATE": str(n * 10), "FASTFLOW_WEBHOOK_IP_RATE": str(n * 10),
           "FASTFLOW_EXECUTOR": "local", "FASTFLOW_CHILD_PROCESS": "1", "DJANGO_SECRET_KEY": "bench-only-secret",
           "FASTFLOW_DB_POOL": os.environ.get("BENCH_DB_POOL", "1")}  # as `up` starts its web server (PostgreSQL only)
    env.pop("REDIS_URL", None)
    if kind == "postgres":
        url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/fastflow_bench")
        dbname = url.rsplit("/", 1)[1]
        admin_url = url.rsplit("/", 1)[0] + "/postgres"
        subprocess.run(["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {dbname}"], check=True)
        subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {dbname}"], check=True)
        env["DATABASE_URL"] = url
    else:
        env.pop("DATABASE_URL", None)
    manage = [sys.executable, str(REPO / "manage.py")]
    subprocess.run(manage + ["migrate", "-v0"], env=env, check=True, cwd=REPO)
    subprocess.run(manage + ["sync_pipelines"], env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    port = free_port()
    web = {}
    try:
        web = start(["web"], env, scratch, port)
        codes, times, lock = {}, [], threading.Lock()
        todo = iter(range(n))

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                body = json.dumps({"env": {"N": str(i)}})
                t0 = time.perf_counter()
                try:
                    conn.request("POST", f"/api/webhooks/hook/{KEY}", body=body,
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    code = resp.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    code = "error"
                elapsed = time.perf_counter() - t0
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    times.append(elapsed)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        count = subprocess.run(manage + ["shell", "-c", "from runs.models import Run; print(Run.objects.count())"],
                               env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    finally:
        stop(web)
        shutil.rmtree(scratch, ignore_errors=True)
    times.sort()
    fivexx = sum(v for k, v in codes.items() if k == "error" or (isinstance(k, int) and k >= 500))
    return {
        "database": kind, "requests": n, "concurrency": concurrency, "codes": {str(k): v for k, v in codes.items()},
        "p50_ms": round(statistics.median(times) * 1000, 1), "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 1),
        "requests_per_s": round(n / wall, 1), "run_rows": int(count.split()[-1]), "accepted_202": codes.get(202, 0),
        "five_xx_or_errors": fivexx, "ok": fivexx == 0 and int(count.split()[-1]) == codes.get(202, 0),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    results = [one_database(k, args.requests, args.concurrency) for k in kinds]
    out = REPO / "bench" / "results" / "webhook_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"\n{'database':10} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} {'202':>6} {'rows':>6} {'5xx':>5}  result")
    for r in results:
        print(f"{r['database']:10} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['requests_per_s']:>7} {r['accepted_202']:>6} "
              f"{r['run_rows']:>6} {r['five_xx_or_errors']:>5}  {'PASS' if r['ok'] else 'FAIL'}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
