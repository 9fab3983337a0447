"""Webhooks: `POST /api/webhooks/{pipeline_id}/{webhook_key}` queues a run, no login.

`webhook_deliver` steps, each answering with its own status (WebhookError.status):
1. find the pipeline: unknown, missing, disabled, or without a webhook_key -> 404;
2. count the delivery against the per-IP limit (wrong keys count too, which slows down
   guessing) -> 429 with Retry-After;
3. compare the key in constant time -> 403;
4. a repeated Idempotency-Key (same pipeline, within 24 h) -> the run made the first time;
5. count the delivery against the per-pipeline limit -> 429 with Retry-After;
6. check the body: larger than the limit -> 413; not JSON, not an object, or not
   `{"env": {...}, "params": {...}}` -> 400 with the reason;
7. queue the run (trigger `webhook`). A pipeline at its concurrency limit is not refused:
   the run waits, queued, like any other.

Rate limits are fixed one-minute windows in Django's cache (per process with the default
local-memory cache; configure a shared cache to share them between web processes).
"""

import hmac
import json
import math
import re
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydantic import ValidationError

from orchestrator.models import Pipeline

IDEMPOTENCY_TTL = timedelta(hours=24)
WINDOW_SECONDS = 60
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


def max_body_bytes():
    return getattr(settings, "FASTFLOW_WEBHOOK_MAX_BODY", 64 * 1024)


def pipeline_rate():
    """Deliveries per minute and pipeline."""
    return getattr(settings, "FASTFLOW_WEBHOOK_RATE", 60)


def ip_rate():
    """Deliveries per minute and client address (any pipeline, right key or not)."""
    return getattr(settings, "FASTFLOW_WEBHOOK_IP_RATE", 300)


class WebhookError(Exception):
    def __init__(self, status, detail, *, retry_after=None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


def rate_limit(scope, ident, limit, *, now=None):
    """Count one hit; seconds to wait when over the limit, else 0. Fixed windows."""
    now = time.time() if now is None else now
    window = int(now // WINDOW_SECONDS)
    key = f"fastflow:rate:{scope}:{ident}:{window}"
    if cache.add(key, 1, timeout=WINDOW_SECONDS + 5):
        count = 1
    else:
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=WINDOW_SECONDS + 5)
            count = 1
    if count <= limit:
        return 0
    return max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))


def _pipeline(pipeline_id):
    pipeline = Pipeline.objects.filter(pk=pipeline_id).first()
    if pipeline is None or pipeline.missing or not pipeline.is_enabled or not pipeline.webhook_key:
        raise WebhookError(404, "no such webhook")
    return pipeline


def _input(body: bytes):
    from runs.services import RunInput

    if len(body) > max_body_bytes():
        raise WebhookError(413, f"the body is larger than {max_body_bytes()} bytes")
    if not body.strip():
        return RunInput()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WebhookError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WebhookError(400, f"the body must be a JSON object with env and params, not {type(data).__name__}")
    try:
        return RunInput.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                            for e in exc.errors()[:5])
        raise WebhookError(400, f"invalid body: {reasons}") from None


def _replay(pipeline, key, now):
    """The run of an earlier delivery with this key, when it is recent enough."""
    from runs.models import Run

    earlier = Run.objects.filter(pipeline=pipeline, idempotency_key=key).first()
    if earlier is None:
        return None
    if earlier.queued_at >= now - IDEMPOTENCY_TTL:
        return earlier
    Run.objects.filter(pk=earlier.pk).update(idempotency_key="")  # expired: the key is free again
    return None


def webhook_deliver(*, pipeline_id, key, read_body, ip, idempotency_key=None, content_length=None):
    """(run, replayed). Raises WebhookError with the status to answer. `read_body()` is
    called only once the delivery is authorised and its declared length is acceptable."""
    from runs.models import Run, Trigger
    from runs.services import InvalidInput, RunRefused, run_trigger

    pipeline = _pipeline(pipeline_id)
    wait = rate_limit("ip", ip or "-", ip_rate())
    if wait:
        raise WebhookError(429, "too many webhook deliveries from this address", retry_after=wait)
    if not hmac.compare_digest(key.encode(), pipeline.webhook_key.encode()):
        raise WebhookError(403, "wrong webhook key")
    if idempotency_key is not None and not _KEY_RE.fullmatch(idempotency_key):
        raise WebhookError(400, "Idempotency-Key must be 1 to 200 printable ASCII characters")
    now = timezone.now()
    if idempotency_key:
        earlier = _replay(pipeline, idempotency_key, now)
        if earlier is not None:
            return earlier, True
    wait = rate_limit("pipeline", pipeline.pk, pipeline_rate())
    if wait:
        raise WebhookError(429, f"too many webhook deliveries for {pipeline.pk}", retry_after=wait)
    if content_length is not None and content_length > max_body_bytes():
        raise WebhookError(413, f"the body is larger than {max_body_bytes()} bytes")
    data = _input(read_body())
    try:
        with transaction.atomic():
            run = run_trigger(pipeline=pipeline, trigger=Trigger.WEBHOOK, env=data.env, params=data.params,
                              idempotency_key=idempotency_key or "")
    except InvalidInput as exc:
        raise WebhookError(400, f"invalid body: {exc}") from None
    except RunRefused as exc:
        raise WebhookError(409, str(exc)) from None
    except IntegrityError:  # a concurrent delivery with the same key won
        return Run.objects.get(pipeline=pipeline, idempotency_key=idempotency_key), True
    return run, False
