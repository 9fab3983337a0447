"""Discovery: the pipelines dir -> Pipeline rows.

`pipeline_sync()` steps:
1. scan the pipelines dir (one `scandir` per folder) and fingerprint each pipeline from the
   stat of its main.py, requirements.txt and *.json files;
2. read and parse only the folders whose fingerprint changed (or that are new);
3. create, update, or mark missing, in one transaction of bulk writes;
4. when anything changed, recompute the errors that involve several pipelines
   (duplicate webhook keys) and the warnings that do (downstream trigger cycles, unknown
   downstream pipelines), and restart the schedules whose definition changed.
A re-sync where nothing changed is one directory scan plus one query.
"""

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.models import Pipeline, SyncState
from orchestrator.schedules import schedules_refresh
from orchestrator.spec import PIPELINE_ID_RE, parse_spec

log = logging.getLogger("fastflow.discovery")


@dataclass
class Found:
    id: str
    path: Path
    fingerprint: str
    json_files: list


@dataclass
class SyncReport:
    created: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unchanged: int = 0
    skipped: list = field(default_factory=list)

    @property
    def changed(self):
        return bool(self.created or self.updated or self.missing)


def _scan(root: Path, report: SyncReport):
    found = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        report.skipped.append({"folder": str(root), "reason": "the pipelines dir does not exist"})
        return found
    real_root = root.resolve()
    for entry in entries:
        try:
            if not entry.is_dir():
                continue
        except OSError:
            continue
        stats = []
        json_files = []
        has_main = False
        try:
            with os.scandir(entry.path) as inner:
                for f in inner:
                    if f.name == "main.py" or f.name == "requirements.txt" or f.name.endswith(".json"):
                        try:
                            st = f.stat()
                        except OSError:
                            continue
                        if f.name == "main.py":
                            has_main = True
                        elif f.name.endswith(".json") and f.is_file():
                            json_files.append(f.name)
                        stats.append(f"{f.name}:{st.st_mtime_ns}:{st.st_size}")
        except OSError as exc:
            report.skipped.append({"folder": entry.name, "reason": f"cannot read folder: {exc.strerror}"})
            continue
        if not has_main:
            continue
        if entry.name.startswith("."):
            report.skipped.append({"folder": entry.name, "reason": "hidden folder"})
            continue
        if not PIPELINE_ID_RE.fullmatch(entry.name):
            report.skipped.append({
                "folder": entry.name,
                "reason": "not a valid pipeline id (letters, digits, '_' and '-' only, at most 100)",
            })
            continue
        if entry.is_symlink():
            target = Path(entry.path).resolve()
            if not target.is_relative_to(real_root):
                report.skipped.append({"folder": entry.name, "reason": "symlink leads outside the pipelines dir"})
                continue
            stats.append(f"->{target}")
        stats.sort()
        digest = hashlib.sha1("\n".join(stats).encode()).hexdigest()
        found.append(Found(entry.name, Path(entry.path), digest, sorted(json_files)))
    return found


def inside_pipelines_dir(path: Path) -> bool:
    """True when path, with every symlink resolved, stays inside the pipelines dir."""
    return path.resolve().is_relative_to(Path(settings.FASTFLOW_PIPELINES_DIR).resolve())


def _metadata_file(item: Found):
    """(file name or "", error or "") by the resolution order in the README."""
    if "pipeline.json" in item.json_files:
        return "pipeline.json", ""
    if f"{item.id}.json" in item.json_files:
        return f"{item.id}.json", ""
    if len(item.json_files) == 1:
        return item.json_files[0], ""
    if len(item.json_files) > 1:
        names = ", ".join(item.json_files)
        return "", f"several metadata candidates ({names}): name one pipeline.json"
    return "", ""


def _read(item: Found, row: Pipeline):
    """Fill a row's spec fields from its folder."""
    meta, error = _metadata_file(item)
    row.metadata_file = meta
    row.fingerprint = item.fingerprint
    row.missing = False
    row.has_requirements = (item.path / "requirements.txt").is_file()
    row.synced_at = timezone.now()
    if error:
        row.spec_text, row.errors, row.warnings = "", [error], []
    elif meta and not inside_pipelines_dir(item.path / meta):
        row.spec_text, row.errors, row.warnings = "", [f"{meta} is a symlink leading outside the pipelines dir"], []
    elif meta:
        try:
            row.spec_text = (item.path / meta).read_text(encoding="utf-8")
            result = parse_spec(row.spec_text, source=meta)
        except (OSError, UnicodeDecodeError) as exc:
            row.spec_text = ""
            result = parse_spec("", source=meta)
            result.errors = [f"{meta}: cannot read: {exc}"]
        row.errors, row.warnings = result.errors, result.warnings
    else:
        row.spec_text, row.errors, row.warnings = "", [], []
    row.__dict__.pop("parsed", None)
    spec = row.parsed.spec
    row.name = (spec.name if spec and spec.name else item.id)[:200]
    row.description = spec.description if spec else ""
    row.tags = list(spec.tags) if spec else []
    row.webhook_key = (spec.webhook_key or "") if spec else ""
    return row


_SPEC_FIELDS = [
    "name", "description", "tags", "metadata_file", "spec_text", "errors", "warnings",
    "webhook_key", "has_requirements", "fingerprint", "missing", "synced_at",
]


def _recompute_conflicts():
    rows = list(Pipeline.objects.filter(missing=False).only("id", "webhook_key", "conflicts"))
    by_key = defaultdict(list)
    for row in rows:
        if row.webhook_key:
            by_key[row.webhook_key].append(row.id)
    changed = []
    for row in rows:
        conflicts = []
        others = [p for p in by_key.get(row.webhook_key, []) if p != row.id] if row.webhook_key else []
        if others:
            conflicts.append(f"webhook_key is also used by: {', '.join(others)}")
        if conflicts != row.conflicts:
            row.conflicts = conflicts
            changed.append(row)
    Pipeline.objects.bulk_update(changed, ["conflicts"], batch_size=500)


def _cycles(graph):
    """Strongly connected components that hold a cycle (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(set(component))
    return found


def _cycle_through(graph, start, members):
    """One shortest cycle start -> ... -> start inside a component (breadth first)."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for child in sorted(graph[path[-1]]):
            if child == start:
                return path + [start]
            if child in members and child not in seen:
                seen.add(child)
                paths.append(path + [child])
    return [start, start]


def _recompute_downstream_warnings():
    """Warn on every pipeline in a downstream cycle, and on triggers naming no pipeline.
    Runs only after a sync that changed something; it parses each spec once."""
    rows = list(Pipeline.objects.filter(missing=False).only("id", "metadata_file", "spec_text", "cross_warnings"))
    graph = {row.id: {t.pipeline for t in row.spec.downstream_triggers if t.on_success or t.on_failure}
             for row in rows}
    warnings = defaultdict(list)
    for members in _cycles(graph):
        for pid in sorted(members):
            path = " → ".join(_cycle_through(graph, pid, members))
            warnings[pid].append(f"downstream_triggers form a cycle ({path}): a chain stops after "
                                 f"FASTFLOW_DOWNSTREAM_MAX_DEPTH runs")
    for pid, targets in graph.items():
        for target in sorted(targets - set(graph)):
            warnings[pid].append(f"downstream_triggers: no pipeline {target!r}")
    changed = []
    for row in rows:
        if warnings.get(row.id, []) != row.cross_warnings:
            row.cross_warnings = warnings.get(row.id, [])
            changed.append(row)
    Pipeline.objects.bulk_update(changed, ["cross_warnings"], batch_size=500)


def pipeline_sync(*, root: Path | None = None) -> SyncReport:
    root = Path(root or settings.FASTFLOW_PIPELINES_DIR)
    report = SyncReport()
    found = _scan(root, report)
    known = dict(Pipeline.objects.values_list("id", "fingerprint"))
    missing_now = set(Pipeline.objects.filter(missing=True).values_list("id", flat=True))

    new_rows, changed_ids = [], []
    for item in found:
        if item.id not in known:
            new_rows.append(_read(item, Pipeline(id=item.id)))
        elif known[item.id] != item.fingerprint or item.id in missing_now:
            changed_ids.append(item.id)
        else:
            report.unchanged += 1
    seen = {item.id for item in found}
    gone = [pid for pid in known if pid not in seen and pid not in missing_now]

    with transaction.atomic():
        if new_rows:
            Pipeline.objects.bulk_create(new_rows, batch_size=500)
            report.created = [r.id for r in new_rows]
        if changed_ids:
            by_id = {item.id: item for item in found}
            rows = [_read(by_id[r.id], r) for r in Pipeline.objects.filter(id__in=changed_ids)]
            Pipeline.objects.bulk_update(rows, _SPEC_FIELDS, batch_size=500)
            report.updated = changed_ids
        if gone:
            Pipeline.objects.filter(id__in=gone).update(missing=True, synced_at=timezone.now())
            report.missing = gone
        if report.changed:
            _recompute_conflicts()
            _recompute_downstream_warnings()
            schedules_refresh(pipeline_ids=report.created + report.updated + report.missing)
        state = SyncState.load()
        if report.changed or state.skipped != report.skipped or state.last_sync_at is None:
            state.skipped = report.skipped
            state.last_sync_at = timezone.now()
            state.save()
    if report.changed:
        log.info("sync: %d new, %d updated, %d missing", len(report.created), len(report.updated), len(report.missing))
    return report


# --- git sync ----------------------------------------------------------------------------------
def pipelines_sync_all() -> SyncReport:
    """Bring the pipelines dir up to date, then discover.

    Steps:
    1. when git sync is enabled (FASTFLOW_GIT_URL), `git_sync()` and record the outcome on
       SyncState: the commit on success; the redacted git error on failure, keeping the
       last good tree (the next interval, webhook or "sync now" retries);
    2. discovery (`pipeline_sync()`), on the new tree or, after a failure, the old one.
    """
    from orchestrator import gitsync

    if gitsync.enabled():
        now = timezone.now()
        try:
            result = gitsync.git_sync()
        except gitsync.GitSyncError as exc:
            message = gitsync.redact(str(exc))
            log.warning("git sync failed, keeping the last good tree: %s", message)
            SyncState.load()
            SyncState.objects.filter(pk=1).update(git_attempted_at=now, git_ok=False, git_error=message)
        else:
            SyncState.load()
            SyncState.objects.filter(pk=1).update(git_attempted_at=now, git_ok=True, git_error="",
                                                  git_commit=result.commit, git_synced_at=now)
    return pipeline_sync()


def git_sync_due(now=None) -> bool:
    """True when git sync is enabled and FASTFLOW_GIT_SYNC_INTERVAL has passed since the
    last attempt (successful or not, so a failing remote is retried at the same pace)."""
    from orchestrator import gitsync

    if not gitsync.enabled():
        return False
    now = now or timezone.now()
    last = SyncState.objects.filter(pk=1).values_list("git_attempted_at", flat=True).first()
    return last is None or (now - last).total_seconds() >= settings.FASTFLOW_GIT_SYNC_INTERVAL


def git_snapshot_for_run():
    """(sha, root) a run should use: the checked-out commit exported once into a read-only
    snapshot (joined with FASTFLOW_GIT_SUBDIR), so a later sync never changes files under
    a running pipeline. (None, None) when git sync is off or nothing is checked out yet."""
    from orchestrator import gitsync

    if not gitsync.enabled():
        return None, None
    sha = gitsync.head()
    if not sha:
        return None, None
    root = gitsync.snapshot(sha)
    if settings.FASTFLOW_GIT_SUBDIR:
        root = root / settings.FASTFLOW_GIT_SUBDIR
    return sha, root


# --- secrets -----------------------------------------------------------------------------------
class MissingSecret(Exception):
    """A pipeline's `secrets` list names a secret that does not exist (or cannot be read)."""

    def __init__(self, pipeline_id, names):
        self.names = list(names)
        super().__init__(f"pipeline {pipeline_id!r} needs secret(s) that do not exist: {', '.join(self.names)} "
                         f"(add them in the admin under Secrets, or with POST /api/secrets)")


def secrets_for_run(pipeline) -> dict[str, str]:
    """Exactly the secrets the pipeline's `secrets` list allows, by name: a pipeline-scoped
    secret wins over a global one. Raises MissingSecret naming every absent one; a value no
    configured key can decrypt raises crypto.DecryptionError (never silently skipped)."""
    from orchestrator.models import Secret

    wanted = list(dict.fromkeys(pipeline.spec.secrets))
    if not wanted:
        return {}
    rows = {}
    for row in Secret.objects.filter(name__in=wanted).filter(Q(pipeline=pipeline) | Q(pipeline__isnull=True)):
        if row.name not in rows or row.pipeline_id:
            rows[row.name] = row
    missing = [name for name in wanted if name not in rows]
    if missing:
        raise MissingSecret(pipeline.id, missing)
    return {name: rows[name].reveal() for name in wanted}


def secret_save(*, name, value, pipeline=None, user=None, source="admin"):
    """Create or change a secret (encrypting `value`) and write its audit entry. (secret, created)."""
    from orchestrator.models import Secret, SecretAudit

    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(name=name, pipeline=pipeline).first()
        created = secret is None
        if created:
            secret = Secret(name=name, pipeline=pipeline)
        secret.set_value(value)
        secret.updated_by = user if getattr(user, "is_authenticated", False) else None
        secret.full_clean()
        secret.save()
        SecretAudit.record(secret, action="create" if created else "change", user=user, source=source)
    return secret, created


def secret_delete(*, secret, user=None, source="admin"):
    from orchestrator.models import SecretAudit

    with transaction.atomic():
        SecretAudit.record(secret, action="delete", user=user, source=source)
        secret.delete()


def secrets_undecryptable():
    """Names (name/scope) of stored secrets no configured key can decrypt."""
    from orchestrator import crypto
    from orchestrator.models import Secret

    bad = []
    for row in Secret.objects.only("name", "pipeline_id", "value_encrypted"):
        try:
            row.reveal()
        except crypto.DecryptionError:
            bad.append(str(row))
    return bad
