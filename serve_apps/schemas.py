"""Request and response bodies of the serving HTTP API (they make the OpenAPI at ``/docs``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_ROWS = 10_000
ID = Field(min_length=1, max_length=256)
_NAME = r"^[a-z][a-z0-9_]{0,62}$"
_ALIAS = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Overrides(_Body):
    """Debug overrides: serve another experiment, a forced group or a forced alias."""

    experiment: str | None = Field(
        None, pattern=_NAME, description="Assign in this experiment (default: the project's first)."
    )
    group: str | None = Field(
        None, pattern=_NAME, description="Serve this group instead of the assigned one."
    )
    alias: str | None = Field(
        None, pattern=_ALIAS, description="Serve both tiers this alias (no champion fallback)."
    )


class FirstTierRequest(Overrides):
    """A user (and context) → K candidates from the whole catalogue."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"user_id": "1", "k": 20}]}
    )

    user_id: str = ID
    k: int | None = Field(None, ge=1, description="Candidates wanted (default serving.default_k).")
    exclude: list[str] = Field(default_factory=list, description="Item ids never to return.")
    context: dict[str, str] = Field(default_factory=dict, description="Free-form request context.")


class SecondTierRequest(Overrides):
    """A user and candidate ids → tier-two scores and the ranking."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "1", "candidates": ["318", "296", "2571"]}]},
    )

    user_id: str = ID
    candidates: list[str] = Field(min_length=1, description="Item ids to score.")
    model: str | None = Field(None, pattern=_NAME, description="Tier-two model (default: first).")
    request_features: dict[str, float | list[float]] = Field(
        default_factory=dict,
        description="Request-time features by name (others: defaults): one number for every "
        "candidate, or a list with one per candidate (e.g. tier1_score and tier1_rank).",
    )
    context: dict[str, str] = Field(default_factory=dict)


class RecommendRequest(Overrides):
    """Both tiers: K candidates, seen items removed, ranked by tier two, top N."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"user_id": "1", "n": 10, "attributes": ["title"]}, {"user_id": "429"}]
        },
    )

    user_id: str = ID
    n: int = Field(10, ge=1, le=1000, description="Items in the answer.")
    k: int | None = Field(
        None,
        ge=1,
        description="Tier-one candidates (default: the ranker's declared candidates."
        "tier_one); its declared popular ones (candidates.popular) come on top.",
    )
    model: str | None = Field(None, pattern=_NAME, description="Tier-two model (default: first).")
    exclude: list[str] = Field(default_factory=list, description="Item ids the caller knows seen.")
    request_features: dict[str, float] = Field(default_factory=dict)
    context: dict[str, str] = Field(default_factory=dict)
    attributes: list[str] = Field(
        default_factory=list,
        max_length=20,
        description='Item attributes to return with each item, e.g. ["title", "genres"] '
        "(from the project's item data; an item without one leaves it out).",
    )


class ScoreRequest(_Body):
    """Raw feature rows for one model, positional (``rows``) or named (``features``)."""

    model: str = Field("ranker", pattern=_NAME, description="Model name within the tier.")
    tier: str = Field("tier2", pattern=_NAME, description="Model tier.")
    alias: str = Field("champion", pattern=_ALIAS, description="Registry alias to score with.")
    rows: list[list[float | None]] | None = Field(
        None, max_length=MAX_ROWS, description="Feature rows in the model's feature order."
    )
    features: list[dict[str, float | None]] | None = Field(
        None, max_length=MAX_ROWS, description="Feature rows as name → value mappings."
    )

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.rows is None) == (self.features is None):
            raise ValueError("send exactly one of 'rows' (lists of values) or 'features' (objects)")
        return self


class AdminModelRequest(_Body):
    """Move (``version`` set) or re-resolve (``version`` null) an alias, then serve it."""

    project: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    tier: Literal["tier1", "tier2"]
    model: str = Field(pattern=_NAME)
    alias: str = Field(pattern=_ALIAS)
    version: str | None = Field(None, pattern=r"^[0-9]+$")


# -- responses -------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """Every error answer: what went wrong and, where there is one, the fix."""

    detail: str = Field(examples=["no project 'nope'; declared: memes, movielens"])


class ModelUsed(BaseModel):
    """One exact model version that took part in an answer."""

    tier: str
    name: str
    version: str
    alias: str = Field(description="The alias it was resolved from.")
    requested_alias: str = Field(description="The alias the route asked for.")
    fallback: bool = Field(description="The requested alias does not exist: champion served.")


class Served(BaseModel):
    """What every answer says about itself."""

    project: str
    user_id: str
    experiment: str | None
    group: str | None
    models: list[ModelUsed]


def _none(value: object) -> bool:
    return value is None


class ItemScore(BaseModel):
    """One item with its score, and its attributes when the request asked for some."""

    item_id: str
    score: float
    attributes: dict[str, str | list[str]] | None = Field(
        None,
        exclude_if=_none,
        description="The item's data asked for in `attributes` (e.g. its title); left out of "
        "the answer when none were asked.",
    )


_COLD = (
    "Tier one never saw this user: the candidates are its declared fallback (popularity of "
    "the last fallback_window_days before training ended)."
)


class FirstTierResponse(Served):
    candidates: list[ItemScore]
    cold_user: bool = Field(description=_COLD)


class SecondTierResponse(Served):
    scores: list[float] = Field(description="Tier-two scores in the order of the candidates.")
    ranking: list[ItemScore] = Field(description="The candidates, best first.")
    features_degraded: bool = Field(
        description="The online store was unreadable: feature defaults were used."
    )


class RecommendResponse(Served):
    request_id: str
    items: list[ItemScore]
    candidates: int = Field(description="Tier-one candidates before seen items were removed.")
    seen_excluded: int = Field(description="Candidates removed as already seen.")
    features_degraded: bool
    cold_user: bool = Field(description=_COLD)


class ScoreResponse(BaseModel):
    """Scores in request order, with the exact version that produced them."""

    model: str
    version: str
    alias: str
    scores: list[float]


class AdminModelResponse(BaseModel):
    name: str
    alias: str
    version: str
    previous_version: str | None
    replicas: int = Field(description="Replicas that acknowledged the new version.")
    seconds: float = Field(description="From the request to the last acknowledgement.")
