from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility, deploy=False)
def executor_check(app_configs, **kwargs):
    """fastflow.E001: executor forced to docker but no engine answers.
    fastflow.W002: auto falls back to the local executor (no isolation)."""
    import os

    from runs.executors import executor_class

    if os.environ.get("FASTFLOW_CHILD_PROCESS"):
        return []  # `up` checked once before starting its children
    kind = settings.FASTFLOW_EXECUTOR
    if kind == "local":
        return [checks.Warning("FASTFLOW_EXECUTOR=local: pipelines run as host processes, NOT isolated.",
                               id="fastflow.W002")]
    if executor_class("docker").available():
        return []
    if kind == "docker":
        return [checks.Error("FASTFLOW_EXECUTOR=docker but no Docker engine answers (DOCKER_HOST or the "
                             "default socket).", hint="Start the engine, or set FASTFLOW_EXECUTOR=auto.",
                             id="fastflow.E001")]
    return [checks.Warning("No Docker engine answers: runs fall back to the LOCAL executor, which does NOT "
                           "isolate pipelines.", hint="Start a Docker engine for isolated runs.",
                           id="fastflow.W002")]
