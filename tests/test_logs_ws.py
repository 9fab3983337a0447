"""Live logs over the websocket, through the real ASGI application and a real log file.

Each test plays the worker (a LogWriter on the run's log, the Run row moved to running and
then final) and one or more viewers (channels' WebsocketCommunicator on
ws/runs/<id>/logs/). A test is a coroutine run with async_to_sync, so the consumer's
database calls run in this thread, on the test database.
"""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client

from conftest import make_pipeline
from fastflow_site.asgi import application
from runhelpers import trigger
from runs import consumers
from runs.consumers import _user_from_token
from runs.logs import MAX_LINE_CHARS, LogWriter
from runs.models import Run
from runs.services import run_cancel

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(pipelines_dir):
    make_pipeline(pipelines_dir, "talker")
    run = trigger("talker")
    assert run.claim()
    return run


def _session(user):
    """A logged-in session of its own (logging another user into one client would end it)."""
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture
def operator(django_user_model):
    """A staff user who may view runs (not a superuser)."""
    user = django_user_model.objects.create_user("operator", password="pw-123456", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    return _session(user)


def viewer(run, cookie=None, query="", origin="http://testserver", headers=()):
    hdrs = [(b"host", b"testserver"), *headers]
    if origin:
        hdrs.append((b"origin", origin.encode()))
    if cookie:
        hdrs.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    return WebsocketCommunicator(application, f"/ws/runs/{run.pk}/logs/{query}", headers=hdrs)


async def receive_until(comm, done, timeout=10):
    """Messages until done(messages) holds (or the status message arrives)."""
    messages = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (messages and (done(messages) or messages[-1]["type"] == "status")):
        left = deadline - loop.time()
        assert left > 0, f"timed out; got {messages!r:.2000}"
        messages.append(json.loads(await comm.receive_from(timeout=left)))
    return messages


def text_of(messages):
    return "".join(m["data"] for m in messages if m["type"] == "log")


def has(needle):
    return lambda messages: needle in text_of(messages)


def check_offsets(messages, start=0):
    """Each message's offset is the byte offset just past its data."""
    for m in messages:
        if m["type"] == "log":
            assert m["offset"] == start + len(m["data"].encode())
            assert m["data"].endswith("\n")
            start = m["offset"]
    return start


finish = sync_to_async(lambda run, status="succeeded": Run.objects.get(pk=run.pk).mark_finished(status=status))


async def expect_status(comm, status):
    assert json.loads(await comm.receive_from(timeout=10)) == {"type": "status", "status": status}


def test_backlog_then_live_lines_then_the_final_status(run, operator):
    async def scenario():
        log = LogWriter(run.log_path)
        log.write("out", b"line 1\nline 2\n")
        comm = viewer(run, operator)
        assert (await comm.connect())[0]
        backlog = await receive_until(comm, has("line 2"))
        assert [line.split(" ", 2)[1:] for line in text_of(backlog).splitlines()] == [
            ["out", "line 1"], ["out", "line 2"]]

        log.write("out", b"line 3\n")  # while connected: arrives live
        log.write("err", b"oops\n")
        live = await receive_until(comm, has("oops"))
        assert "line 3" in text_of(live) and " err oops\n" in text_of(live)
        assert await comm.receive_nothing(timeout=0.4)  # the run goes on: no status yet

        log.system("run succeeded")
        log.close()
        await finish(run)
        rest = await receive_until(comm, has("run succeeded"))
        await expect_status(comm, "succeeded")
        everything = backlog + live + rest
        assert check_offsets(everything) == run.log_path.stat().st_size
        assert text_of(everything) == run.log_path.read_text()
        await comm.disconnect()

    async_to_sync(scenario)()


def test_resume_by_offset_has_no_gap_and_no_duplicate(run, operator):
    async def scenario():
        log = LogWriter(run.log_path)
        for i in range(3000):  # ~130 KB: the backlog comes in several messages
            log.write("out", f"early {i}\n".encode())
        comm = viewer(run, operator)
        assert (await comm.connect())[0]
        first = await receive_until(comm, lambda m: len(m) == 1)
        await comm.disconnect()
        stop = check_offsets(first)
        assert 0 < stop < run.log_path.stat().st_size

        for i in range(10):  # written while nobody watches
            log.write("out", f"late {i}\n".encode())
        again = viewer(run, operator, f"?offset={stop}")
        assert (await again.connect())[0]
        log.close()
        await finish(run, "failed")
        second = await receive_until(again, lambda m: False)
        assert second[-1] == {"type": "status", "status": "failed"}
        check_offsets(second, start=stop)
        assert text_of(first + second) == run.log_path.read_text()
        lines = text_of(first + second).splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == [f"early {i}" for i in range(3000)] + [
            f"late {i}" for i in range(10)]
        await again.disconnect()

    async_to_sync(scenario)()


def test_three_concurrent_viewers_and_a_late_one_each_get_every_line_once(run, operator):
    async def scenario():
        log = LogWriter(run.log_path)
        viewers = [viewer(run, operator) for _ in range(3)]
        for comm in viewers:
            assert (await comm.connect())[0]
        received = [[] for _ in viewers]

        async def drain(i):
            received[i] += await receive_until(viewers[i], lambda m: False, timeout=20)

        readers = [asyncio.create_task(drain(i)) for i in range(3)]
        for burst in range(20):
            log.write("out", b"".join(f"burst {burst} line {j}\n".encode() for j in range(50)))
            log.write("err", f"burst {burst} on stderr\n".encode())
            await asyncio.sleep(0.02)
        log.close()
        await finish(run)
        await asyncio.gather(*readers)

        expected = run.log_path.read_text()
        assert expected.count("\n") == 20 * 51
        for messages in received:
            assert messages[-1] == {"type": "status", "status": "succeeded"}
            assert text_of(messages) == expected  # every line, once, in order
            check_offsets(messages)

        late = viewer(run, operator)
        assert (await late.connect())[0]
        backlog = await receive_until(late, lambda m: False)
        assert text_of(backlog) == expected and backlog[-1]["status"] == "succeeded"
        for comm in [*viewers, late]:
            await comm.disconnect()

    async_to_sync(scenario)()


def test_unauthenticated_and_unauthorised_viewers_are_rejected(run, operator, django_user_model):
    outsider = _session(django_user_model.objects.create_user("outsider", password="pw-123456"))
    staff_without_permission = _session(
        django_user_model.objects.create_user("intern", password="pw-123456", is_staff=True))

    async def rejected(comm):
        connected, _ = await comm.connect()
        await comm.disconnect()
        return not connected

    async def scenario():
        assert await rejected(viewer(run))  # no cookie at all
        assert await rejected(viewer(run, "not-a-session-key"))
        assert await rejected(viewer(run, outsider))  # logged in, but not staff
        assert await rejected(viewer(run, staff_without_permission))
        assert await rejected(viewer(run, operator, origin="http://evil.example"))  # cross-site
        assert await rejected(viewer(run, headers=[(b"authorization", b"Bearer not-a-token")]))
        assert await rejected(viewer(run, query="?token=not-a-token"))
        assert await rejected(viewer(Run(pk=run.pk + 1000), operator))  # no such run
        assert await rejected(viewer(run, operator, "?offset=-1"))
        assert await rejected(viewer(run, operator, "?offset=abc"))
        # The same operator is let in from this site, or from a non-browser client.
        for comm in (viewer(run, operator), viewer(run, operator, origin=None)):
            assert (await comm.connect())[0]
            await comm.disconnect()

    async_to_sync(scenario)()


def test_an_api_token_lets_a_viewer_in_by_header_or_query(run, django_user_model):
    from orchestrator.models import ApiToken

    token, raw = ApiToken.issue(user=django_user_model.objects.create_user("robot", password="pw-123456"))
    LogWriter(run.log_path).write("out", b"for the robot\n")
    assert _user_from_token("not-a-token") is None

    async def scenario():
        for comm in (viewer(run, headers=[(b"authorization", f"Bearer {raw}".encode())], origin=None),
                     viewer(run, query=f"?token={raw}&offset=0", origin=None)):
            assert (await comm.connect())[0]
            assert "for the robot" in text_of(await receive_until(comm, has("for the robot")))
            await comm.disconnect()
        await sync_to_async(token.revoke)()
        comm = viewer(run, headers=[(b"authorization", f"Bearer {raw}".encode())])
        assert not (await comm.connect())[0]
        await comm.disconnect()

    async_to_sync(scenario)()


def test_a_masked_secret_never_reaches_a_viewer_even_split_across_chunks(run, operator):
    secret = "hunter2-Sup3rSecret"

    async def scenario():
        log = LogWriter(run.log_path, secrets=[secret, "first line\nsecond line of a key"])
        comm = viewer(run, operator)
        assert (await comm.connect())[0]
        log.write("out", b"password=hunter2-Su")  # the secret arrives in three reads
        log.write("out", b"p3rSe")
        log.write("out", b"cret and more\n")
        log.write("err", secret.encode()[:5])
        log.write("out", b"interleaved stdout\n")
        log.write("err", secret.encode()[5:] + b"\n")
        # A line with no newline, longer than MAX_LINE_CHARS, the secret across the flush.
        filler = b"x" * (MAX_LINE_CHARS - 7)
        log.write("out", filler + secret.encode()[:9])
        log.write("out", secret.encode()[9:] + b" tail\n")
        log.write("out", b"key: first line\nsecond line of a key\n")
        log.system(f"env had {secret}")
        messages = await receive_until(comm, has("env had"))
        log.close()
        await finish(run)
        messages += await receive_until(comm, lambda m: False)
        data = text_of(messages)
        assert messages[-1]["type"] == "status"
        for shown in (data, run.log_path.read_text()):
            assert secret not in shown and "hunter2" not in shown and "Sup3r" not in shown
            assert "first line" not in shown and "second line of a key" not in shown
            assert " out password=*** and more\n" in shown and " err ***\n" in shown
            assert " sys env had ***\n" in shown and " out key: ***\n" in shown
            assert "*** tail\n" in shown
        await comm.disconnect()

    async_to_sync(scenario)()


def test_a_run_cancelled_before_it_started_sends_only_its_status_then_closes(pipelines_dir, operator,
                                                                             monkeypatch):
    """The viewer is expected to close after the status; if it does not, the server does
    (after a grace period that lets a viewer far behind read the end first)."""
    monkeypatch.setattr(consumers, "CLOSE_GRACE_SECONDS", 0.3)
    make_pipeline(pipelines_dir, "never")
    run = trigger("never")
    assert run_cancel(run=run)

    async def scenario():
        comm = viewer(run, operator)
        assert (await comm.connect())[0]
        await expect_status(comm, "cancelled")
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 1000}
        await comm.disconnect()

    async_to_sync(scenario)()
