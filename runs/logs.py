"""Run logs: one append-only file per run, written while the run goes.

Each line of the file is `<UTC timestamp> <stream> <text>\\n`, stream being `out`, `err`
or `sys` (messages from Fast-Flow itself). Byte offsets into this file are what the
websocket and the REST API hand out, so a viewer can resume exactly where it stopped.

Masking happens on whole lines, before anything is written, so a secret split across two
reads from the container is joined first and still masked.
"""

import codecs
import os
import threading
from datetime import datetime, timezone

from django.conf import settings

MASK = "***"
STREAMS = ("out", "err", "sys")


def _stamp():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogWriter:
    def __init__(self, path, *, secrets=(), max_bytes=None):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fh = open(path, "ab", buffering=0)
        self.size = self._fh.tell()
        self.max_bytes = max_bytes or settings.FASTFLOW_LOG_MAX_BYTES
        self.truncated = False
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)
        self._pending = {s: "" for s in STREAMS}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
        self._lock = threading.Lock()

    def mask(self, text):
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def write(self, stream, data: bytes):
        """Feed raw bytes from a stream; complete lines go to the file at once."""
        with self._lock:
            text = self._pending[stream] + self._decoders[stream].decode(data)
            *lines, rest = text.split("\n")
            self._pending[stream] = rest
            if len(rest) > 64 * 1024:  # a huge line with no newline: flush it in pieces
                lines.append(rest)
                self._pending[stream] = ""
            self._emit(stream, lines)

    def system(self, message):
        with self._lock:
            self._emit("sys", message.split("\n"))

    def _emit(self, stream, lines):
        if not lines or self.truncated:
            return
        stamp = _stamp()
        chunk = "".join(f"{stamp} {stream} {self.mask(line.rstrip(chr(13)))}\n" for line in lines).encode()
        if self.size + len(chunk) > self.max_bytes:
            marker = f"{stamp} sys [log truncated: reached the {self.max_bytes} byte cap; later output dropped]\n".encode()
            room = self.max_bytes - self.size
            cut = chunk[:room].rsplit(b"\n", 1)[0] + b"\n" if b"\n" in chunk[:room] else b""
            chunk = cut + marker
            self.truncated = True
        self._fh.write(chunk)
        self.size += len(chunk)

    def close(self):
        with self._lock:
            for stream in STREAMS:
                tail = self._pending[stream] + self._decoders[stream].decode(b"", final=True)
                self._pending[stream] = ""
                if tail:
                    self._emit(stream, [tail])
            self._fh.close()


def read_log(path, offset=0, limit=1024 * 1024):
    """(bytes from offset up to limit, ending at a line boundary when possible; next offset)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except FileNotFoundError:
        return b"", offset
    if len(data) == limit and b"\n" in data:
        data = data[: data.rindex(b"\n") + 1]
    return data, offset + len(data)
