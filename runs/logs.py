"""Run logs: one append-only file per run, written while the run goes.

Each line of the file is `<UTC timestamp> <stream> <text>\\n`, stream being `out`, `err`
or `sys` (messages from Fast-Flow itself, and dependency builds). Byte offsets into this
file are what the websocket and the REST API hand out, so a viewer can resume exactly where
it stopped. The file is always valid UTF-8 (invalid bytes from a pipeline become U+FFFD) and
every line ends with a newline, written by one `write()` call: a reader that stops at the
last newline never sees half a line.

Masking happens on whole lines, before anything is written, so a secret split across two
reads from the container is joined first and still masked. A line that grows past
MAX_LINE_CHARS without a newline is written in pieces, cut where no secret can straddle
the cut. A multi-line secret is masked line by line.

Each such piece is also counted in a small side file (`<log>.cuts`, one stream name per
line), so `lines_seen` can tell how many of the pipeline's own lines the file holds: a
re-attached run skips exactly those in the engine's replay.

The size cap (FASTFLOW_LOG_MAX_BYTES) is strict: the file never grows past it. Pipeline
output stops a little before the cap with a visible marker line; the rest is kept for
Fast-Flow's own closing lines (how the run ended), so a capped run still says how it ended.
"""

import codecs
import logging
import os
import threading
from datetime import datetime, timezone

from django.conf import settings

MASK = "***"
STREAMS = ("out", "err", "sys")
MAX_LINE_CHARS = 64 * 1024  # longer lines (no newline yet) are written in pieces
MIN_SECRET_CHARS = 3  # shorter values would mask ordinary text and hide almost nothing
READ_LIMIT = 1024 * 1024

log = logging.getLogger("fastflow.logs")


def _stamp():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _secret_parts(secrets):
    """The strings to mask: each secret, or each line of a multi-line one; longest first,
    so a secret that contains another is masked whole."""
    parts = set()
    for secret in secrets:
        for part in str(secret or "").replace("\r", "\n").split("\n"):
            if len(part) >= MIN_SECRET_CHARS:
                parts.add(part)
    return sorted(parts, key=len, reverse=True)


class LogWriter:
    """Writes one run's log. Thread-safe: stdout and stderr are pumped by two threads.

    Never raises for the pipeline's output (bad bytes, huge lines, a full disk): logging
    must not be what kills a run. A write error is logged once and later output dropped.
    """

    def __init__(self, path, *, secrets=(), max_bytes=None):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._fh = open(path, "ab", buffering=0)
        self.size = self._fh.tell()
        self.max_bytes = max_bytes or settings.FASTFLOW_LOG_MAX_BYTES
        # Room kept under the cap for the lines that say how the run ended.
        self._reserve = min(16 * 1024, self.max_bytes // 8)
        self.truncated = self.size >= self.max_bytes - self._reserve  # re-opened after the cap
        self.failed = False
        self.closed = False
        self._secrets = _secret_parts(secrets)
        self._keep = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = {s: "" for s in STREAMS}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
        self._lock = threading.Lock()
        self._cuts = None

    def mask(self, text):
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def write(self, stream, data: bytes):
        """Feed raw bytes from a stream; complete lines go to the file at once."""
        with self._lock:
            if self.truncated or self.failed or self.closed:
                return  # dropped: past the cap (the marker says so), or the disk failed
            text = self._pending[stream] + self._decoders[stream].decode(data)
            *lines, rest = text.split("\n")
            pieces = 0
            while len(rest) > MAX_LINE_CHARS:
                cut = self._safe_cut(rest)
                lines.append(rest[:cut])
                rest = rest[cut:]
                pieces += 1
            self._pending[stream] = rest
            if pieces:  # counted first: a crash in between re-sends a piece, never drops a line
                self._count_cuts(stream, pieces)
            self._emit(stream, lines)

    def _count_cuts(self, stream, pieces):
        try:
            if self._cuts is None:
                self._cuts = open(cuts_path(self.path), "ab", buffering=0)
            self._cuts.write(f"{stream}\n".encode() * pieces)
        except OSError as exc:
            log.warning("log %s: could not count line pieces (%s)", self.path, exc)

    def _safe_cut(self, text):
        """Where to cut an unterminated line: before the last `keep` characters (any secret
        still arriving starts there), and never inside a whole secret."""
        first = cut = len(text) - self._keep
        moved = True
        while moved:
            moved = False
            for secret in self._secrets:
                i = text.find(secret, max(0, cut - len(secret) + 1))
                if i != -1 and i < cut:
                    cut, moved = i, True
        # cut is 0 only for a line of overlapping secrets ("aaaa…"); first < 32K only for a
        # secret longer than that. Either way, write something: the line must move on.
        return max(cut if cut > 0 else first, MAX_LINE_CHARS // 2)

    def system(self, message):
        """A line (or lines) from Fast-Flow itself; written even past the cap while the
        reserve lasts, so a capped run still records how it ended. An unterminated last
        line of the pipeline goes first: it was printed before this message."""
        with self._lock:
            if not self.closed:
                self._flush_pending()
                self._emit("sys", str(message).split("\n"), closing=True)

    def _flush_pending(self):
        for stream in STREAMS:
            tail = self._pending[stream] + self._decoders[stream].decode(b"", final=True)
            self._decoders[stream].reset()
            self._pending[stream] = ""
            if tail and not self.truncated:
                self._emit(stream, [tail])

    def _emit(self, stream, lines, closing=False):
        if not lines or self.failed:
            return
        stamp = _stamp()
        body = self.mask("\n".join(line[:-1] if line.endswith("\r") else line for line in lines))
        chunk = "".join(f"{stamp} {stream} {line}\n" for line in body.split("\n")).encode()
        limit = self.max_bytes if closing else self.max_bytes - self._reserve
        if self.size + len(chunk) > limit:
            if self.truncated:
                return  # even the reserve is used up
            chunk = self._cut_at_cap(chunk, stamp)
        try:
            self._fh.write(chunk)
        except OSError as exc:
            self.failed = True
            log.error("log %s: write failed (%s); later output of this run is dropped", self.path, exc)
            return
        self.size += len(chunk)

    def _cut_at_cap(self, chunk, stamp):
        marker = (f"{stamp} sys [log truncated: reached the {self.max_bytes} byte cap "
                  f"(FASTFLOW_LOG_MAX_BYTES); later output dropped]\n").encode()
        room = max(0, self.max_bytes - self._reserve - len(marker) - self.size)
        head = chunk[:room]
        head = head[: head.rindex(b"\n") + 1] if b"\n" in head else b""
        self.truncated = True
        return head + marker

    def close(self):
        with self._lock:
            if self.closed:
                return
            self._flush_pending()
            self.closed = True
            self._fh.close()
            if self._cuts is not None:
                self._cuts.close()


def cuts_path(path):
    return f"{path}.cuts"


def lines_seen(path):
    """How many of the pipeline's own lines, per stream (`out`, `err`), a log file holds
    complete: its lines of that stream, less the pieces a long line was cut into."""
    seen = {"out": 0, "err": 0}
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    continue
                stream = line.split(b" ", 2)[1:2]
                if stream in ([b"out"], [b"err"]):
                    seen[stream[0].decode()] += 1
    except FileNotFoundError:
        pass
    try:
        with open(cuts_path(path), "rb") as fh:
            for line in fh:
                name = line.strip().decode(errors="replace")
                if name in seen:
                    seen[name] -= 1
    except FileNotFoundError:
        pass
    return {name: max(0, n) for name, n in seen.items()}


def _utf8_boundary(data):
    """Length of the longest prefix of data that does not end inside a UTF-8 character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the start of the last character
            width = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return end if back >= width else end - back
    return end


def read_log(path, offset=0, limit=READ_LIMIT, *, whole_lines=True):
    """Read a run's log from a byte offset: (data, next offset), next = offset + len(data).

    `data` ends just after a newline, so the next read starts on a fresh line; a single line
    longer than `limit` comes in pieces cut on a UTF-8 character boundary. With
    whole_lines=False (the run is over) a last unterminated line is returned too.
    A missing file reads as empty: the run has not written anything yet.
    """
    offset = max(0, int(offset))
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except FileNotFoundError:
        return b"", offset
    if data and not data.endswith(b"\n"):
        if b"\n" in data:
            if whole_lines or len(data) == limit:
                data = data[: data.rindex(b"\n") + 1]
        elif len(data) == limit:
            data = data[: _utf8_boundary(data)]
        elif whole_lines:
            data = b""
    return data, offset + len(data)


def log_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def tail_offset(path, nbytes):
    """The offset of the first whole line within the last `nbytes` of the log (0 if the log
    is shorter): where a viewer that shows only the tail should start."""
    size = log_size(path)
    if size <= nbytes:
        return 0
    start = size - nbytes
    with open(path, "rb") as fh:
        fh.seek(start - 1)
        data = fh.read(nbytes + 1)
    newline = data.find(b"\n")
    return size if newline == -1 else start + newline


def parse_line(line):
    """`<ts> <stream> <text>` -> (ts, stream, text); a line that does not fit is ("", "", line)."""
    ts, _, rest = line.partition(" ")
    stream, _, text = rest.partition(" ")
    if stream not in STREAMS:
        return "", "", line
    return ts, stream, text
