"""Executors: where a run's process lives. A registry from kind to dotted path, imported
lazily, so the docker SDK is not needed to run the local executor and vice versa."""

import importlib
import logging

from django.conf import settings

from runs.executors.base import Executor, ExecutorError, Job, Outcome  # noqa: F401

EXECUTORS = {
    "docker": "runs.executors.docker.DockerExecutor",
    "local": "runs.executors.local.LocalExecutor",
}
CHOICES = [(kind, kind) for kind in EXECUTORS]
log = logging.getLogger("fastflow.executors")


def executor_class(kind):
    module, _, name = EXECUTORS[kind].rpartition(".")
    return getattr(importlib.import_module(module), name)


def resolve_kind(requested=None):
    """`auto` picks docker when an engine answers, else local (with a loud warning)."""
    kind = requested or settings.FASTFLOW_EXECUTOR
    if kind != "auto":
        return kind
    if executor_class("docker").available():
        return "docker"
    log.warning("No Docker engine answers: runs use the LOCAL executor, which does NOT isolate pipelines.")
    return "local"


def get_executor(kind=None) -> Executor:
    return executor_class(resolve_kind(kind))()
