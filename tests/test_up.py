"""`manage.py up` as a new user runs it: one command brings up the admin with the gallery,
and SIGTERM stops everything with no orphan processes."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.contrib.admin.utils import quote

from stack import free_port

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path, port, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(FASTFLOW_DATA_DIR=str(tmp_path / "data"), FASTFLOW_PORT=str(port),
               FASTFLOW_ADMIN_PASSWORD="up-test-pw-1", FASTFLOW_EXECUTOR="local", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _descendants(pid):
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        nxt = {p for p, pp, _ in rows if pp in frontier} - found
        found |= nxt
        frontier = nxt
    return found


def _login_and_get(port, path):
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"http://127.0.0.1:{port}/admin/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urlencode({"csrfmiddlewaretoken": token, "username": "admin", "password": "up-test-pw-1",
                      "next": path}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/login/", data=data,
                                 headers={"Referer": f"http://127.0.0.1:{port}/admin/login/"})
    return opener.open(req).read().decode()


def test_up_serves_the_gallery_and_stops_cleanly(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "manage.py", "up"], cwd=REPO, env=_env(tmp_path, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Fast-Flow is up" in line or proc.poll() is not None:
                break
        assert any("Fast-Flow is up: http://127.0.0.1:%d/admin/" % port in line for line in lines), "".join(lines)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        page = _login_and_get(port, "/admin/orchestrator/pipeline/")
        for pid in ["pipeline_a", "pipeline_b", "pipeline_c", "failing_pipeline", "delayed_success",
                    "delayed_random", "ram_limit_fail", "ram_limit_success"]:
            assert f"/admin/orchestrator/pipeline/{quote(pid)}/change/" in page
        detail = _login_and_get(port, "/admin/orchestrator/pipeline/pipeline_b/change/")
        assert "data_processor.json" in detail
        children = _descendants(proc.pid)
        assert len(children) >= 3  # web, workers (+ their processes), dispatcher
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    time.sleep(0.5)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}")
             and "zombie" not in open(f"/proc/{pid}/status").read()]
    assert alive == [], f"orphans left: {alive}"


def test_port_clash_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "manage.py", "up"], cwd=REPO, env=_env(tmp_path, port),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "FASTFLOW_PORT" in result.stderr


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    result = subprocess.run([sys.executable, "manage.py", "up"], cwd=REPO,
                            env=_env(tmp_path, free_port(), FASTFLOW_DATA_DIR=str(blocker)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "FASTFLOW_DATA_DIR" in result.stderr and "not a writable directory" in result.stderr


@pytest.mark.parametrize("name, value", [("FASTFLOW_PORT", "eighty"), ("FASTFLOW_WORKERS", "0"),
                                         ("FASTFLOW_EXECUTOR", "kubernetes"), ("DJANGO_DEBUG", "maybe")])
def test_bad_settings_name_the_variable(tmp_path, name, value):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO,
                            env=_env(tmp_path, free_port(), **{name: value}), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and name in result.stderr


def test_processes_starting_together_all_accept_the_data_dir(tmp_path, monkeypatch):
    # `up` starts web, workers and dispatcher at once: each checks the data dir is writable,
    # and no check may trip over another's (it once made a process see "not writable").
    import threading

    from fastflow_site import settings as site_settings

    monkeypatch.setenv("FASTFLOW_DATA_DIR", str(tmp_path / "shared"))
    errors = []

    def check():
        for _ in range(200):
            try:
                site_settings._data_dir()
            except Exception as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list((tmp_path / "shared").iterdir()) == []  # no probe left behind
