"""Live run logs over a websocket: `ws/runs/<id>/logs/?offset=N`.

Messages (DESIGN.md), JSON text frames:
- `{"type": "log", "offset": <int>, "data": "<text>"}`. `data` is the run's log file from
  byte `start` up to byte `offset` (exclusive), decoded as UTF-8: one or more whole lines
  `<UTC ts> <out|err|sys> <text>\\n` (only a line longer than CHUNK_BYTES comes in pieces,
  cut between characters). **`offset` is the byte offset in the log file just past the
  last byte of `data`**; `start` is the previous message's `offset`, or the `?offset=` the
  viewer connected with (default 0: the whole log). So a viewer that reconnects with
  `?offset=<offset of the last log message it got>` resumes at the next byte: no gap, no
  duplicate. `runs.logs.read_log` hands out the same offsets (for GET /api/runs/{id}/logs).
- `{"type": "status", "status": "<succeeded|failed|cancelled>"}`: the last message, sent
  once the run is final and every byte of its log has been sent. The viewer should close
  the socket then; the server closes it (code 1000) CLOSE_GRACE_SECONDS later otherwise.

Who may watch: an active staff user with the "view run" permission, by the admin session
cookie (and, when the browser sends an Origin header, only from this site's origin or
CSRF_TRUSTED_ORIGINS, so another site cannot ride the cookie); or any active user with an
API token, as `Authorization: Bearer <token>` or `?token=<token>` (the header is better:
query strings end up in proxy logs). Anyone else, an unknown run or a bad offset: the
handshake is refused (HTTP 403 from daphne).

How a viewer follows a run. The log is written by the q2 worker, another process and
maybe another host, so the consumer follows the file rather than a message bus:
1. read the file from the offset in chunks of CHUNK_BYTES, each cut after a newline
   (`runs.logs.read_log`), and send each chunk as one message: the backlog, then, polling
   the file's size every POLL_SECONDS, whatever is appended;
2. every STATUS_SECONDS, read the Run's status from the database. The worker closes the
   log before it marks the run final, so once the status is final, one last read gets
   everything; then send the status message, and close once the viewer has read it.
Every viewer follows the file on its own, with its own offset: any number of viewers, each
gets every line exactly once and in order, a late viewer gets the whole backlog, and the
web process holds at most about one chunk plus HIGH_WATER_BYTES per viewer, whatever the
size of the log.

Scale-out (REDIS_URL, several hosts): no channel layer is involved. The web processes must
see the workers' log files: run them on one host, or mount one shared volume as
FASTFLOW_DATA_DIR (at least its `logs/` folder) on every web and worker host.
"""

import asyncio
import contextlib
import functools
import json
import logging
from importlib import import_module
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user
from django.http.cookie import parse_cookie

from runs.logs import log_size, read_log
from runs.models import FINAL, Run

log = logging.getLogger("fastflow.logs")

POLL_SECONDS = 0.05
STATUS_SECONDS = 0.25
CHUNK_BYTES = 64 * 1024
# Daphne buffers whatever an app sends (ASGI has no flow control); past this many unsent
# bytes for one socket we wait for the viewer to read, so a slow viewer or a huge backlog
# cannot grow the web process by the size of the log.
HIGH_WATER_BYTES = 512 * 1024
CLOSE_GRACE_SECONDS = 10.0


def _user_from_token(raw):
    """The active user an API token belongs to, or None. The token model belongs to the REST
    API (orchestrator.models.ApiToken), imported here lazily: without it no token is valid."""
    try:
        from orchestrator.models import ApiToken
    except ImportError:
        return None
    return ApiToken.authenticate(raw)


def _headers(scope):
    headers = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        value = value.decode("latin-1")
        headers[key] = f"{headers[key]}; {value}" if key in headers else value
    return headers


def _same_origin(headers):
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser: no ambient cookie to abuse
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    return bool(headers.get("host")) and urlsplit(origin).netloc == headers["host"]


class _SessionCopy(dict):
    """What get_user reads of the session. A copy: a websocket must never rotate or delete
    the browser's session (get_user cycles the key when SECRET_KEY_FALLBACKS verify it)."""

    def cycle_key(self):
        pass

    def flush(self):
        self.clear()


def _session_user(headers):
    key = parse_cookie(headers.get("cookie", "")).get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user = get_user(SimpleNamespace(session=_SessionCopy(store.items())))  # checks the auth hash too
    if user.is_active and user.is_staff and user.has_perm("runs.view_run"):
        return user
    return None


def _authenticate(scope, query):
    """The user allowed to watch, or None: token if one is given, else the session cookie."""
    headers = _headers(scope)
    scheme, _, raw = headers.get("authorization", "").partition(" ")
    token = raw.strip() if scheme.lower() == "bearer" else (query.get("token") or [""])[-1]
    if token:
        user = _user_from_token(token)
        return user if user is not None and user.is_active else None
    if not _same_origin(headers):
        return None
    return _session_user(headers)


def _parse_offset(raw):
    try:
        offset = int(raw)
    except (TypeError, ValueError):
        return None
    return offset if offset >= 0 else None


@database_sync_to_async
def _connect_checks(scope, query, run_id):
    if _authenticate(scope, query) is None:
        return None
    run = Run.objects.filter(pk=run_id).only("id").first()
    return run.log_path if run else None


@database_sync_to_async
def _status(run_id):
    return Run.objects.filter(pk=run_id).values_list("status", flat=True).first()


def _unsent_bytes(send):
    """Bytes daphne holds for this socket, not yet handed to the kernel. Daphne passes
    `send` as partial(server.handle_reply, protocol); the Twisted transport keeps the
    buffer. Under another server (or a test communicator) this is 0: no pacing."""
    if not isinstance(send, functools.partial) or not send.args:
        return 0
    transport = getattr(send.args[0], "transport", None)
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return 0


class RunLogConsumer(AsyncWebsocketConsumer):
    channel_layer_alias = "fastflow-no-layer"  # no such layer: log lines never use one
    follower = None
    gone = False

    async def connect(self):
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        offset = _parse_offset((query.get("offset") or ["0"])[-1])
        path = await _connect_checks(self.scope, query, run_id) if offset is not None else None
        if path is None:
            await self.close()  # before accept: the handshake is refused
            return
        await self.accept()
        self.follower = asyncio.create_task(self._follow(run_id, path, offset))

    async def disconnect(self, code):
        self.gone = True
        if self.follower:
            self.follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.follower

    async def receive(self, text_data=None, bytes_data=None):
        pass  # viewers have nothing to say; reconnecting with ?offset= is how they resume

    async def _follow(self, run_id, path, offset):
        try:
            loop = asyncio.get_running_loop()
            next_status = 0.0
            while True:
                offset = await self._send_new(path, offset)
                if loop.time() >= next_status:
                    status = await _status(run_id)
                    next_status = loop.time() + STATUS_SECONDS
                    if status is None or status in FINAL:
                        await self._send_new(path, offset, whole_lines=False)
                        if status is not None:
                            await self.send(text_data=json.dumps({"type": "status", "status": status}))
                        await self._close_when_read()
                        return
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.gone:
                return
            log.exception("live log of run %s: follower failed", run_id)
            await self.close(code=1011)

    async def _close_when_read(self):
        """Close once the viewer has had time to read everything. A viewer may be seconds
        behind (reading what the kernel and daphne buffer for it); a close sent now would
        start autobahn's 1 s close-handshake timer, after which daphne drops the connection
        with the end of the log unread. So: wait until daphne's buffer is empty, give the
        viewer CLOSE_GRACE_SECONDS to close first (it has the status), then close."""
        while _unsent_bytes(self.base_send) and not self.gone:
            await asyncio.sleep(0.01)
        await asyncio.sleep(CLOSE_GRACE_SECONDS)
        if not self.gone:
            await self.close(code=1000)

    async def _send_new(self, path, offset, whole_lines=True):
        """Send everything appended since `offset`, a chunk per message; the new offset."""
        while log_size(path) > offset and not self.gone:
            data, end = await asyncio.to_thread(read_log, path, offset, CHUNK_BYTES, whole_lines=whole_lines)
            if end == offset:
                break  # only part of a line so far
            await self.send(text_data=json.dumps(
                {"type": "log", "offset": end, "data": data.decode("utf-8", "replace")}, ensure_ascii=False))
            offset = end
            while _unsent_bytes(self.base_send) > HIGH_WATER_BYTES and not self.gone:
                await asyncio.sleep(0.005)
        return offset
