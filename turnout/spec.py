"""Schemas turnout agrees on: the router's route table (and, later, ModelDeployment).

Pure pydantic models: validation messages name the field, so a bad file is rejected with a
reason an operator can act on. Field names are camelCase on the wire, as in Kubernetes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel


class _Spec(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Upstream(_Spec):
    """One model version behind the router."""

    version: str = Field(min_length=1)
    url: str = Field(description="base URL of the version's model server, e.g. http://host:3000")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("must be an http:// or https:// base URL")
        return value.rstrip("/")


class Candidate(Upstream):
    #: Percent of traffic (and of sticky keys) sent to the candidate, 0-100.
    weight: float = Field(default=0.0, ge=0, le=100)


class Shadow(Upstream):
    #: Percent of requests mirrored to the shadow, 0-100.
    percent: float = Field(default=100.0, ge=0, le=100)


class Fallback(_Spec):
    """What answers when every version failed: an error body, or a fixed prediction."""

    mode: Literal["error", "static"] = "error"
    message: str = "the model is unavailable; try again shortly"
    #: The probability returned for every row in static mode.
    probability: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _static_needs_value(self) -> Fallback:
        if self.mode == "static" and self.probability is None:
            raise ValueError("fallback mode 'static' needs 'probability'")
        return self


class ModelRoute(_Spec):
    stable: Upstream
    candidate: Candidate | None = None
    shadow: Shadow | None = None
    #: Request header whose value pins a caller to one arm (absent: uniform random).
    sticky_header: str = "x-user-id"
    #: Hash salt: a new salt reshuffles which keys land on which arm.
    salt: str = ""
    #: Per-attempt upstream timeout.
    timeout_ms: float = Field(default=1000, gt=0, le=600_000)
    shadow_timeout_ms: float = Field(default=1000, gt=0, le=600_000)
    #: Score at which a prediction counts as "fraud" when comparing shadow and primary.
    agreement_threshold: float = Field(default=0.5, ge=0, le=1)
    #: Retry a failed candidate call on stable (inference is idempotent).
    retry_on_stable: bool = True
    fallback: Fallback = Fallback()

    @field_validator("sticky_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class RouteTable(_Spec):
    models: dict[str, ModelRoute] = Field(min_length=1)


class SpecError(ValueError):
    """A document that is not a valid spec; the message names each bad field."""


def parse_route_table(doc: Any) -> RouteTable:
    """Validate a parsed YAML/JSON document as a route table, or raise SpecError."""
    try:
        return RouteTable.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem, each starting with the field's dotted path."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)
