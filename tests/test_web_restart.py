"""Kill the web process (SIGKILL) while a websocket viewer is attached: the viewer
reconnects to a new web process with its last offset and resumes with no gap and no
duplicate, then gets the final status."""

import asyncio
import json
import os
import signal
import time

import pytest

from orchestrator.models import ApiToken, Pipeline
from orchestrator.services import pipeline_sync
from runs.models import Run
from runs.services import run_trigger
from stack import free_port, running

pytestmark = pytest.mark.django_db(transaction=True)


async def _read(url, until_offset_lines=None, timeout=60):
    """Collect (offset, data) messages; stop after `until_offset_lines` progress lines or the status."""
    import websockets.asyncio.client as ws

    got, status, progress = [], None, 0
    async with ws.connect(url, open_timeout=20) as sock:
        async with asyncio.timeout(timeout):
            async for raw in sock:
                msg = json.loads(raw)
                if msg["type"] == "status":
                    status = msg["status"]
                    break
                got.append((msg["offset"], msg["data"]))
                progress += msg["data"].count(" out progress ")
                if until_offset_lines and progress >= until_offset_lines:
                    break
    return got, status


def test_viewer_resumes_by_offset_after_the_web_process_is_killed(gallery, django_user_model):
    pipeline_sync()
    user = django_user_model.objects.create_user("watcher", password="pw-watcher-1")
    _, token = ApiToken.issue(user=user, name="ws")
    port = free_port()
    with running("workers", "dispatcher", FASTFLOW_EXECUTOR="local"):
        run = run_trigger(pipeline=Pipeline.objects.get(pk="delayed_success"), trigger="api",
                          env={"DELAY_SECONDS": "8"})
        url = f"ws://127.0.0.1:{port}/ws/runs/{run.pk}/logs/?token={token}"
        with running("web", port=port) as web:
            first, status = asyncio.run(_read(url, until_offset_lines=2))
            assert status is None and first
            os.killpg(web["web"].pid, signal.SIGKILL)
            web["web"].wait()
        last_offset = first[-1][0]
        with running("web", port=port):
            rest, status = asyncio.run(_read(url.replace("?token", f"?offset={last_offset}&token"), timeout=90))
        deadline = time.monotonic() + 30
        while not Run.objects.get(pk=run.pk).is_final and time.monotonic() < deadline:
            time.sleep(0.1)
    assert status == "succeeded"
    text = "".join(data for _, data in first + rest)
    assert text.encode() == run.log_path.read_bytes()  # byte for byte: no gap, no duplicate
    progress = [ln.split(" ", 2)[2] for ln in text.splitlines() if " out progress " in ln]
    assert progress == [f"progress {i}/8" for i in range(1, 9)]
