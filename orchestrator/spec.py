"""The pipeline.json spec: typed, strict, with readable errors.

`parse_spec(text)` never raises for bad input: it returns a `ParseResult` whose `errors`
name the field path (or the line and column of broken JSON) and whose `warnings` list
unknown keys. Every valid field has exactly one meaning, documented in the README.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PIPELINE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_MEM_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value):
    """`"512m"`, `"1.5g"`, `"2G"`, `"64MiB"` or a plain integer of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size like \"512m\" or a number of bytes, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be a positive number of bytes")
        return value
    if isinstance(value, str):
        match = _MEM_RE.match(value)
        if match:
            number = float(match.group(1)) * _MEM_UNITS[match.group(2).lower()]
            if number >= 1:
                return int(number)
    raise ValueError(f"{value!r} is not a memory size (examples: \"512m\", \"1.5g\", 1048576)")


def format_memory(num_bytes):
    if num_bytes is None:
        return "-"
    for unit, size in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:.4g}{unit}"
    return f"{num_bytes}b"


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {json.dumps(value)}")
    return value


MemorySize = Annotated[int, BeforeValidator(parse_memory)]
Number = Annotated[float, BeforeValidator(_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExponentialBackoff(_Strict):
    type: Literal["exponential_backoff"]
    initial_delay: Number = Field(default=5, ge=0)
    max_delay: Number = Field(default=300, ge=0)
    multiplier: Number = Field(default=2, ge=1)

    def delay(self, n):
        try:
            raw = self.initial_delay * self.multiplier ** (n - 1)
        except OverflowError:  # a huge multiplier: the cap applies
            raw = float("inf")
        return float(min(raw, self.max_delay))


class FixedDelay(_Strict):
    type: Literal["fixed_delay"]
    delay_seconds: Number = Field(default=5, ge=0, alias="delay")

    def delay(self, n):
        return float(self.delay_seconds)


class CustomSchedule(_Strict):
    type: Literal["custom_schedule"]
    delays: list[Number] = Field(min_length=1)

    @field_validator("delays")
    @classmethod
    def _non_negative(cls, value):
        if any(d < 0 for d in value):
            raise ValueError("delays must be zero or more seconds")
        return value

    def delay(self, n):
        return float(self.delays[min(n, len(self.delays)) - 1])


RetryStrategy = Annotated[
    Union[ExponentialBackoff, FixedDelay, CustomSchedule], Field(discriminator="type")
]


class DownstreamTrigger(_Strict):
    pipeline: StrictStr
    on_success: StrictBool = True
    on_failure: StrictBool = False

    @field_validator("pipeline")
    @classmethod
    def _valid_id(cls, value):
        if not PIPELINE_ID_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a pipeline id")
        return value


class PipelineSpec(_Strict):
    """Everything pipeline.json may say. Unknown keys are dropped with a warning."""

    name: StrictStr | None = None
    description: StrictStr = ""
    tags: list[StrictStr] = Field(default_factory=list)
    enabled: StrictBool = True

    cpu_hard_limit: Number | None = Field(default=None, gt=0)
    mem_hard_limit: MemorySize | None = None
    cpu_soft_limit: Number | None = Field(default=None, gt=0)
    mem_soft_limit: MemorySize | None = None
    timeout: StrictInt | None = Field(default=None, ge=0)
    network_mode: StrictStr | None = None

    retry_attempts: StrictInt = Field(default=0, ge=0, le=100)
    retry_strategy: RetryStrategy | None = None

    webhook_key: StrictStr | None = Field(default=None, min_length=8, max_length=200)

    schedule_cron: StrictStr | None = None
    schedule_interval_seconds: StrictInt | None = Field(default=None, gt=0)
    schedule_timezone: StrictStr = "UTC"
    schedule_start: datetime | None = None
    schedule_end: datetime | None = None
    schedule_catchup: Literal["latest", "none", "all"] = "latest"

    default_env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    secrets: list[StrictStr] = Field(default_factory=list)
    max_instances: StrictInt | None = Field(default=None, ge=1)
    downstream_triggers: list[DownstreamTrigger] = Field(default_factory=list)

    @field_validator("default_env", "secrets")
    @classmethod
    def _env_names(cls, value, info):
        """Both become environment variables of the run, so both need valid names."""
        bad = [k for k in value if not ENV_NAME_RE.fullmatch(k)]
        if bad:
            what = "environment variable" if info.field_name == "default_env" else "secret"
            raise ValueError(f"not valid {what} names: {', '.join(map(repr, bad))}")
        return value

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value):
        if value is not None:
            if len(value.split()) != 5 or not croniter.is_valid(value):
                raise ValueError(f"{value!r} is not a 5-field cron expression")
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _tz(cls, value):
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a known time zone") from None
        return value

    @field_validator("network_mode")
    @classmethod
    def _network(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
            raise ValueError(f"{value!r} is not a Docker network mode")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.schedule_cron and self.schedule_interval_seconds:
            raise ValueError("set schedule_cron or schedule_interval_seconds, not both")
        # A start or end without an offset is read in schedule_timezone.
        zone = ZoneInfo(self.schedule_timezone)
        for name in ("schedule_start", "schedule_end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=zone))
        if self.schedule_start and self.schedule_end and self.schedule_end <= self.schedule_start:
            raise ValueError("schedule_end must be after schedule_start")
        return self

    def retry_delay(self, n):
        """Seconds to wait before retry number n (1 = the first retry)."""
        strategy = self.retry_strategy or FixedDelay(type="fixed_delay", delay=0)
        return strategy.delay(n)


@dataclass
class ParseResult:
    spec: PipelineSpec | None
    raw: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _loc(loc):
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _drop_union_noise(loc):
    # pydantic names union members in the path ("cpu_hard_limit.int"); users never wrote them.
    noise = {"exponential_backoff", "fixed_delay", "custom_schedule"}
    return tuple(p for p in loc if not (isinstance(p, str) and (p in noise or p.startswith("function-"))))


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON (write a number)")


def parse_spec(text, source="pipeline.json"):
    """Parse pipeline.json text. Never raises for bad input."""
    if text is None or not text.strip():
        return ParseResult(spec=PipelineSpec()) if text is None else ParseResult(
            spec=None, errors=[f"{source}: file is empty (write {{}} for no settings)"]
        )
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        if not isinstance(exc, json.JSONDecodeError):
            return ParseResult(spec=None, errors=[f"{source}: invalid JSON: {exc}"])
        return ParseResult(spec=None, errors=[f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"])
    if not isinstance(raw, dict):
        return ParseResult(spec=None, errors=[f"{source}: must be a JSON object, not {type(raw).__name__}"])
    warnings = [f"{source}: unknown key {key!r} is ignored" for key in raw if key not in PipelineSpec.model_fields]
    known = {k: v for k, v in raw.items() if k in PipelineSpec.model_fields}
    try:
        spec = PipelineSpec.model_validate(known)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = _loc(_drop_union_noise(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            line = f"{source}: {loc}: {msg}"
            if line not in errors:
                errors.append(line)
        return ParseResult(spec=None, raw=raw, errors=errors, warnings=warnings)
    return ParseResult(spec=spec, raw=raw, warnings=warnings)
