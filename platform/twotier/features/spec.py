"""The feature contract: feature groups and model features, declared once per project.

A **feature group** holds the ordered features of one entity (user, item or user-item pair).
Its *raw* features (counters, sums, last-seen times) are what the stores keep; its
*derived* features (rates with a prior, recency) are computed from raw ones at read time,
the same way online and offline. **Model features** list feature groups in order plus
request-time features, which fixes a model's input tensor column by column; the spec is
stored with every registered model.

Example (YAML, under ``projects.<name>`` in ``twotier.yaml``)::

    feature_groups:
      - name: user_stats
        entity: user
        version: 1
        features:
          - {name: views, kind: counter, action: view}
          - {name: smiles, kind: counter, action: smile}
          - {name: smile_rate, kind: rate, numerator: smiles, denominator: views,
             prior_mean: 0.5, prior_weight: 5}
    models:
      - name: ranker
        tier: tier2
        feature_groups: [user_stats, item_stats]
        request_features: [{name: position, default: 0}]
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twotier.experiments import Experiment

Entity = Literal["user", "item", "user_item"]
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_NOT_IN_FIELD = re.compile(r"[^A-Za-z0-9_]")


def value_field(name: str, value: str) -> str:
    """The stored field (and column suffix) of one value of a ``by`` counter or attribute.

    ``<name>__<value>``, any character other than a letter, digit or ``_`` replaced by
    ``_``, so values such as ``Sci-Fi`` make field names every store accepts.

    Example:
        >>> value_field("genre", "Film-Noir"), value_field("views_by_type", "gif")
        ('genre__Film_Noir', 'views_by_type__gif')
    """
    return f"{name}__{_NOT_IN_FIELD.sub('_', value)}"


def _check_values(feature: str, values: tuple[str, ...]) -> None:
    fields = [value_field(feature, v) for v in values]
    for value in values:
        if not value or "." in value or value.startswith("$"):
            raise ValueError(f"feature {feature!r}: value {value!r} may not hold '.' or '$'")
    if len(set(fields)) != len(fields):
        raise ValueError(
            f"feature {feature!r}: values {list(values)} give the same field twice "
            "(a value is listed twice, or two differ only in characters other than letters, "
            "digits and '_', which fields spell as '_')"
        )


"""Feature, group and model names: lowercase, no dots (FerretDB field names), no ``$``."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- features -------------------------------------------------------------------


DEFAULT_DECAY_REFERENCE_TS = 946_684_800_000
"""2000-01-01 UTC in ms: where decayed counters' stored weights are 1."""
MAX_DECAY_EXPONENT = 1000.0
"""Half-lives between an event and the reference beyond which a float64 weight overflows."""


class CounterFeature(_Spec):
    """A raw counter (``agg: count``) or sum of event values (``agg: sum``) of one action.

    With ``by`` (an event context key such as ``content_type`` or ``genre``) and ``values``,
    it expands into one stored field and one column per value, in the order of ``values``,
    named ``<name>__<value>``.

    With ``half_life_days`` it is **time-decayed**: an event ``d`` days before the request
    counts ``2 ** (-d / half_life_days)`` (recent popularity without windows to expire).
    Still a plain ``$inc``: each event adds ``2 ** ((ts - reference_ts) / half_life)``
    and reads multiply by ``2 ** ((reference_ts - now) / half_life)``, online and offline
    alike. Events must lie within 1,000 half-lives of ``reference_ts``.
    """

    kind: Literal["counter"] = "counter"
    name: str = Field(pattern=NAME_PATTERN)
    action: str = Field(min_length=1)
    agg: Literal["count", "sum"] = "count"
    by: str | None = Field(None, pattern=NAME_PATTERN)
    values: tuple[str, ...] = ()
    default: float = 0.0
    column: bool = True
    """False: stored (for the rates that read it) but not a column of the models."""
    half_life_days: float | None = Field(None, gt=0)
    reference_ts: int = DEFAULT_DECAY_REFERENCE_TS

    def decay_weight(self, ts: float) -> float:
        """What one event at ``ts`` (ms) adds per unit (1 unless decayed).

        Raises:
            ValueError: The event lies too far from ``reference_ts`` for a float64.
        """
        if self.half_life_days is None:
            return 1.0
        exponent = (float(ts) - self.reference_ts) / (self.half_life_days * 86_400_000.0)
        if abs(exponent) > MAX_DECAY_EXPONENT:
            raise ValueError(
                f"feature {self.name!r}: an event at ts={int(ts)} lies {exponent:.0f} "
                f"half-lives from reference_ts={self.reference_ts}; set reference_ts "
                "within 1,000 half-lives of the events (it is stored with the group: bump "
                "the group's version)"
            )
        return float(2.0**exponent)

    @model_validator(mode="after")
    def _by_needs_values(self) -> CounterFeature:
        if (self.by is None) != (not self.values):
            raise ValueError(f"feature {self.name!r}: `by` and `values` go together")
        _check_values(self.name, self.values)
        return self


class LastSeenFeature(_Spec):
    """A raw last event time (ms) of one action, stored with ``$max``; ``default`` if never."""

    kind: Literal["last_seen"] = "last_seen"
    name: str = Field(pattern=NAME_PATTERN)
    action: str = Field(min_length=1)
    default: float = 0.0
    column: bool = True
    """False: stored (for the recency that reads it) but not a column of the models: an
    absolute time only tells a model when a row was made, which never recurs."""


class RateFeature(_Spec):
    """Derived at read time: ``(num + prior_mean * prior_weight) / (den + prior_weight)``.

    With ``prior_weight: 0`` and a zero denominator the value is ``prior_mean``.
    """

    kind: Literal["rate"] = "rate"
    name: str = Field(pattern=NAME_PATTERN)
    numerator: str
    denominator: str
    prior_mean: float = 0.0
    prior_weight: float = Field(0.0, ge=0)

    @property
    def default(self) -> float:
        return self.prior_mean


class RecencyFeature(_Spec):
    """Derived at read time: seconds from the ``last_seen`` feature ``of`` to the request time.

    ``default`` (e.g. a large number) when the entity never did the action.
    """

    kind: Literal["recency"] = "recency"
    name: str = Field(pattern=NAME_PATTERN)
    of: str
    default: float = 1e9


class AttributeFeature(_Spec):
    """A static item attribute from the project's item data (``twotier.items``).

    With ``values`` it is **multi-hot**: one column per value, in the order of ``values``,
    named ``<name>__<value>``, 1 when the item's ``attribute`` (a string or a list of
    strings, e.g. a movie's ``genres``) holds the value, else 0. Without ``values`` it is
    **numeric**: the attribute parsed as a number (the first one of a list), ``default``
    when the item has none or it is not a number.

    Attribute features live in attribute-only item groups; such a group is read from the
    item data, online (the ``content`` collection) and offline (the ``items`` table), and
    no event ever writes it. Attributes are static: a training row sees an item's current
    attributes, as serving does.
    """

    kind: Literal["attribute"] = "attribute"
    name: str = Field(pattern=NAME_PATTERN)
    attribute: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    values: tuple[str, ...] = ()
    default: float = 0.0

    @model_validator(mode="after")
    def _distinct_values(self) -> AttributeFeature:
        _check_values(self.name, self.values)
        return self

    def fields(self) -> list[str]:
        """Its columns: ``<name>__<value>`` per value, or just ``<name>``."""
        return [value_field(self.name, v) for v in self.values] if self.values else [self.name]


Feature = Annotated[
    CounterFeature | LastSeenFeature | RateFeature | RecencyFeature | AttributeFeature,
    Field(discriminator="kind"),
]
RAW_KINDS = ("counter", "last_seen")


# -- feature groups ---------------------------------------------------------------


class FeatureGroup(_Spec):
    """The ordered features of one entity, kept online and/or offline."""

    name: str = Field(pattern=NAME_PATTERN)
    entity: Entity
    version: int = Field(1, ge=1)
    online: bool = True
    offline: bool = True
    features: tuple[Feature, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> FeatureGroup:
        attributes = [f.name for f in self.features if isinstance(f, AttributeFeature)]
        if attributes and (self.entity != "item" or len(attributes) != len(self.features)):
            raise ValueError(
                f"group {self.name!r}: attribute features ({attributes}) go in an item group "
                "that holds only attribute features (they are read from the item data, not "
                "counted from events): move them to a group of their own with entity: item"
            )
        seen: dict[str, str] = {}
        for f in self.features:
            if f.name in seen:
                raise ValueError(f"group {self.name!r}: feature {f.name!r} declared twice")
            seen[f.name] = f.kind
        for f in self.features:
            refs: list[tuple[str, tuple[str, ...]]] = []
            if isinstance(f, RateFeature):
                refs = [(f.numerator, ("counter",)), (f.denominator, ("counter",))]
            elif isinstance(f, RecencyFeature):
                refs = [(f.of, ("last_seen",))]
            for ref, kinds in refs:
                if seen.get(ref) not in kinds:
                    raise ValueError(
                        f"group {self.name!r}: feature {f.name!r} refers to {ref!r}, which is "
                        f"not a {' or '.join(kinds)} feature of this group"
                    )
            if isinstance(f, RateFeature):
                decays = {
                    (g.half_life_days, g.reference_ts if g.half_life_days else None)
                    for g in self.features
                    if isinstance(g, CounterFeature) and g.name in (f.numerator, f.denominator)
                }
                if len(decays) > 1:
                    raise ValueError(
                        f"group {self.name!r}: rate {f.name!r} divides counters that decay "
                        "differently: give numerator and denominator the same half_life_days "
                        "and reference_ts (or neither)"
                    )
        return self

    @property
    def key(self) -> str:
        """``<name>_v<version>``: the stored name; a new version is a new collection/table."""
        return f"{self.name}_v{self.version}"

    @property
    def static(self) -> bool:
        """True for a group of item attributes: read from the item data, fed by no event."""
        return all(isinstance(f, AttributeFeature) for f in self.features)

    def from_events(self, *, online: bool | None = None, offline: bool | None = None) -> bool:
        """True when events feed this group (kept online/offline where asked).

        Writers, snapshot builders and checks use this to skip static groups.
        """
        if self.static:
            return False
        if online is not None and self.online != online:
            return False
        return offline is None or self.offline == offline

    def source_attributes(self) -> list[str]:
        """The item attributes a static group reads, in declaration order, once each."""
        names = [f.attribute for f in self.features if isinstance(f, AttributeFeature)]
        return list(dict.fromkeys(names))

    def raw_features(self) -> list[CounterFeature | LastSeenFeature]:
        """The features the stores keep, in declaration order."""
        return [f for f in self.features if isinstance(f, CounterFeature | LastSeenFeature)]

    def stored_fields(self) -> list[str]:
        """Field names of the raw values in a stored document, in order."""
        fields: list[str] = []
        for f in self.features:
            if isinstance(f, AttributeFeature):
                fields.extend(f.fields())
        for f in self.raw_features():
            if isinstance(f, CounterFeature) and f.by:
                fields.extend(value_field(f.name, v) for v in f.values)
            else:
                fields.append(f.name)
        return fields

    def column_features(self) -> list[Feature]:
        """The features that are model columns (``column: false`` raw ones are not)."""
        return [f for f in self.features if getattr(f, "column", True)]

    def columns(self) -> list[str]:
        """Output column names of this group (raw and derived), in declaration order."""
        columns: list[str] = []
        for f in self.column_features():
            if isinstance(f, CounterFeature) and f.by:
                columns.extend(value_field(f.name, v) for v in f.values)
            elif isinstance(f, AttributeFeature):
                columns.extend(f.fields())
            else:
                columns.append(f.name)
        return columns


# -- model features -----------------------------------------------------------------


class RequestFeature(_Spec):
    """A feature the caller sends with the request (e.g. the slot position)."""

    name: str = Field(pattern=NAME_PATTERN)
    default: float = 0.0


class CandidateSpec(_Spec):
    """Which candidates a tier-two model ranks: tier one's best, plus recent popularity.

    Training builds its rows from exactly these candidates (``twotier.models.candidates``)
    and serving sends exactly these to the ranker, so the ranker is never asked about a
    kind of candidate it did not learn from.
    """

    tier_one: int = Field(200, ge=1, le=100_000)
    """Tier one's best items per user (its ALS scores; cold users get its fallback)."""
    popular: int = Field(0, ge=0, le=100_000)
    """Added from tier one's fallback row (recent popularity) when not already there."""
    rerank_cold: bool = True
    """False: users tier one never saw get its fallback in its own order (recent
    popularity), not re-ranked; for rankers that know nothing more of a new user."""


class AffinityFeature(_Spec):
    """A user x item cross feature: the share of a user's counts that fall in an item's values.

    ``user`` names a ``by`` counter of a user group (e.g. ``user_genres.views_by_genre``,
    views per genre) and ``item`` a multi-hot attribute of an item group with the same
    values (e.g. ``item_attrs.genre``). For a candidate the value is
    ``sum(u[v] * i[v]) / sum(u[v])`` over the values ``v``: of the user's views, the share
    in the candidate's genres (a Drama-Comedy view counts in both). ``default`` when the
    user has no count yet. Computed from the stored values at read time, online and
    offline alike (``derive.affinity_matrix``), so a counter with ``column: false`` can
    feed it; decay cancels out of the ratio.
    """

    name: str = Field(pattern=NAME_PATTERN)
    user: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}\.[a-z][a-z0-9_]{0,62}$")
    """``<user group>.<by counter>``."""
    item: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}\.[a-z][a-z0-9_]{0,62}$")
    """``<item group>.<multi-hot attribute feature>``."""
    default: float = 0.0

    def parts(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """``((user group, counter), (item group, attribute feature))``."""
        ug, uf = self.user.split(".")
        ig, if_ = self.item.split(".")
        return (ug, uf), (ig, if_)


TIER_ONE_SCORE = "tier1_score"
TIER_ONE_RANK = "tier1_rank"
POPULAR_RANK = "popular_rank"
CANDIDATE_FEATURES = (TIER_ONE_SCORE, TIER_ONE_RANK, POPULAR_RANK)
"""Request features filled per candidate by the platform (training rows and serving)."""


class ModelFeatures(_Spec):
    """The input layout of one model: feature groups, affinities, then request features.

    Request features named ``tier1_score``, ``tier1_rank`` and ``popular_rank`` are
    filled per candidate with tier one's score and rank (0 = best; an item added only for
    its popularity gets the last score and ``candidates.tier_one`` as rank) and its rank
    in tier one's fallback row, recent popularity (``tier_one + popular`` beyond it), the
    same way in training and in serving.
    """

    name: str = Field(pattern=NAME_PATTERN)
    tier: Literal["tier1", "tier2"] = "tier2"
    feature_groups: tuple[str, ...] = Field(min_length=1)
    affinities: tuple[AffinityFeature, ...] = ()
    """User x item cross features, columns ``affinity.<name>`` after the groups' ones."""
    request_features: tuple[RequestFeature, ...] = ()
    candidates: CandidateSpec = CandidateSpec()

    @model_validator(mode="after")
    def _unique_request_features(self) -> ModelFeatures:
        names = [r.name for r in self.request_features]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: request features declared twice: {names}")
        crosses = [a.name for a in self.affinities]
        if len(set(crosses)) != len(crosses):
            raise ValueError(f"model {self.name!r}: affinities declared twice: {crosses}")
        return self

    def candidate_features(self) -> list[str]:
        """The request features the platform fills per candidate, in declaration order."""
        return [r.name for r in self.request_features if r.name in CANDIDATE_FEATURES]


class ModelFeatureSpec(_Spec):
    """What travels with a registered model: its layout and the full groups it reads.

    Serving rebuilds exactly the training layout from this, even after the project's
    configuration has moved on.
    """

    model: ModelFeatures
    groups: tuple[FeatureGroup, ...]

    @model_validator(mode="after")
    def _affinities(self) -> ModelFeatureSpec:
        for a in self.model.affinities:
            affinity_inputs(self, a)
        return self

    def columns(self) -> list[str]:
        """The model's input columns: ``<group>.<column>`` per group, ``affinity.<name>``
        per affinity, then ``request.<name>`` per request feature."""
        cols = [f"{g.name}.{c}" for g in self.groups for c in g.columns()]
        cols += [f"affinity.{a.name}" for a in self.model.affinities]
        return cols + [f"request.{r.name}" for r in self.model.request_features]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> ModelFeatureSpec:
        return cls.model_validate(json.loads(data))


def affinity_inputs(
    spec: ModelFeatureSpec, affinity: AffinityFeature
) -> tuple[int, CounterFeature, int, AttributeFeature]:
    """Where an affinity's inputs are: ``(user group index, counter, item group index,
    attribute)`` in ``spec.groups``.

    Raises:
        ValueError: A named group is not read by the model, is of the wrong entity, lacks
            the feature, the feature is of the wrong kind, or the value sets differ.
    """
    (ug, uf), (ig, if_) = affinity.parts()
    names = [g.name for g in spec.groups]
    where = f"model {spec.model.name!r}: affinity {affinity.name!r}"
    for group, entity in ((ug, "user"), (ig, "item")):
        if group not in names:
            raise ValueError(f"{where} reads group {group!r}, which the model does not: {names}")
        if spec.groups[names.index(group)].entity != entity:
            raise ValueError(f"{where}: group {group!r} is not a {entity} group")
    ui, ii = names.index(ug), names.index(ig)
    counter = next((f for f in spec.groups[ui].features if f.name == uf), None)
    if not isinstance(counter, CounterFeature) or not counter.by:
        raise ValueError(f"{where}: {affinity.user!r} is not a counter with `by` and `values`")
    attribute = next((f for f in spec.groups[ii].features if f.name == if_), None)
    if not isinstance(attribute, AttributeFeature) or not attribute.values:
        raise ValueError(f"{where}: {affinity.item!r} is not an attribute with `values`")
    if set(counter.values) != set(attribute.values):
        raise ValueError(
            f"{where}: {affinity.user!r} counts values {sorted(counter.values)} but "
            f"{affinity.item!r} has {sorted(attribute.values)}: declare the same values"
        )
    return ui, counter, ii, attribute


# -- projects ---------------------------------------------------------------------------


class ProjectFeatures(_Spec):
    """The feature groups and model features of one project."""

    feature_groups: tuple[FeatureGroup, ...] = ()
    models: tuple[ModelFeatures, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    """A/B experiments of the project (``twotier.experiments``)."""

    @model_validator(mode="after")
    def _references(self) -> ProjectFeatures:
        names = [g.name for g in self.feature_groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature groups declared twice: {duplicates}")
        experiments = [e.name for e in self.experiments]
        if len(set(experiments)) != len(experiments):
            raise ValueError(f"experiments declared twice: {experiments}")
        for m in self.models:
            unknown = [g for g in m.feature_groups if g not in names]
            if unknown:
                raise ValueError(
                    f"model {m.name!r} reads unknown feature group(s) {unknown} (declared: {names})"
                )
            self.model_spec(m.name)  # checks its affinities
        return self

    def group(self, name: str) -> FeatureGroup:
        for g in self.feature_groups:
            if g.name == name:
                return g
        raise KeyError(
            f"no feature group {name!r}; declared: {[g.name for g in self.feature_groups]}"
        )

    def model_spec(self, model: str) -> ModelFeatureSpec:
        """The layout of ``model`` with the groups it reads, ready to store with the model."""
        for m in self.models:
            if m.name == model:
                return ModelFeatureSpec(
                    model=m, groups=tuple(self.group(g) for g in m.feature_groups)
                )
        raise KeyError(f"no model {model!r}; declared: {[m.name for m in self.models]}")
