from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.spec import format_memory


class ExecutorError(Exception):
    """The executor could not run the pipeline (engine down, image missing, build failed).
    `permanent` says retrying the same run cannot help (a missing image, bad requirements)."""

    def __init__(self, message, *, permanent=False):
        super().__init__(message)
        self.permanent = permanent


@dataclass
class Job:
    run_id: int
    pipeline_id: str
    code_dir: Path
    env: dict
    log: object  # runs.logs.LogWriter
    requirements: str = ""
    cpu_hard_limit: float | None = None
    mem_hard_limit: int | None = None
    cpu_soft_limit: float | None = None
    mem_soft_limit: int | None = None
    timeout: int = 0
    network_mode: str | None = None
    cancelled: Callable[[], bool] = lambda: False
    on_started: Callable[..., None] = lambda **fields: None


@dataclass
class Outcome:
    status: str  # succeeded | failed | cancelled
    reason: str = ""
    exit_code: int | None = None
    message: str = ""
    setup_seconds: float | None = None
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    peak_cpu_cores: float | None = None
    warnings: list = field(default_factory=list)


class Executor:
    name = ""

    @classmethod
    def available(cls) -> bool:
        return True

    def execute(self, job: Job) -> Outcome:
        raise NotImplementedError


def soft_limit_warnings(job: Job, outcome: Outcome):
    warnings = []
    if job.mem_soft_limit and outcome.peak_memory_bytes and outcome.peak_memory_bytes > job.mem_soft_limit:
        warnings.append(
            f"memory soft limit exceeded: peak {format_memory(outcome.peak_memory_bytes)} "
            f"> {format_memory(job.mem_soft_limit)}"
        )
    if job.cpu_soft_limit and outcome.peak_cpu_cores and outcome.peak_cpu_cores > job.cpu_soft_limit:
        warnings.append(
            f"CPU soft limit exceeded: peak {outcome.peak_cpu_cores:.2f} cores > {job.cpu_soft_limit:g}"
        )
    return warnings


def exit_outcome(code, *, oom=False, timed_out=False, cancelled=False, timeout=0):
    """The one place that turns how a process ended into status, reason and message."""
    if cancelled:
        return Outcome("cancelled", exit_code=code, message="cancelled by request")
    if timed_out:
        return Outcome("failed", "timed_out", code, f"killed after the {timeout} s timeout")
    if oom:
        return Outcome("failed", "oom_killed", code, "killed by the kernel: out of memory (memory hard limit reached)")
    if code == 0:
        return Outcome("succeeded", exit_code=0)
    if code is not None and code < 0:
        return Outcome("failed", "exit_code", code, f"killed by signal {-code}")
    return Outcome("failed", "exit_code", code, f"exited with code {code}")
