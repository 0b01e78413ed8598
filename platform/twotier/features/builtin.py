"""The projects twotier ships: MovieLens (the demo) and a synthetic meme feed (load tests).

A ``projects:`` section in ``twotier.yaml`` replaces these; this is what an empty one means.
"""

from __future__ import annotations

from typing import Any

from twotier.features.spec import ProjectFeatures


def _stats(entity: str, name: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "entity": entity,
        "version": 1,
        "features": [
            {"name": "views", "kind": "counter", "action": "view"},
            {"name": "smiles", "kind": "counter", "action": "smile"},
            {"name": "dislikes", "kind": "counter", "action": "dislike"},
            *extra,
            {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
            {
                "name": "smile_rate",
                "kind": "rate",
                "numerator": "smiles",
                "denominator": "views",
                "prior_mean": 0.3,
                "prior_weight": 5,
            },
            {"name": "since_last_view_s", "kind": "recency", "of": "last_view_ts"},
        ],
    }


_RATING = [
    {"name": "rating_sum", "kind": "counter", "action": "view", "agg": "sum"},
]
_MEAN_RATING = {
    "name": "mean_rating",
    "kind": "rate",
    "numerator": "rating_sum",
    "denominator": "views",
    "prior_mean": 3.5,
    "prior_weight": 5,
}

MOVIELENS: dict[str, Any] = {
    "feature_groups": [
        _stats("user", "user_stats", [*_RATING]),
        _stats("item", "item_stats", [*_RATING]),
    ],
    "models": [
        {"name": "ranker", "tier": "tier2", "feature_groups": ["user_stats", "item_stats"]},
    ],
    # The demo's A/B test: half the users get the champion, half the challenger (a group
    # whose alias does not exist yet is served the champion until it does).
    "experiments": [
        {
            "name": "ranker_ab",
            "salt": "movielens-ranker-ab",
            "groups": [
                {"name": "control", "share": 0.5, "alias": "champion"},
                {"name": "treatment", "share": 0.5, "alias": "challenger"},
            ],
        }
    ],
}
for _group in MOVIELENS["feature_groups"]:
    _group["features"].append(_MEAN_RATING)

CONTENT_TYPES = ("image", "video", "gif")

MEMES: dict[str, Any] = {
    "feature_groups": [
        _stats(
            "user",
            "user_stats",
            [
                {"name": "comments", "kind": "counter", "action": "comment"},
                {"name": "shares", "kind": "counter", "action": "share"},
                {
                    "name": "smiles_by_type",
                    "kind": "counter",
                    "action": "smile",
                    "by": "content_type",
                    "values": list(CONTENT_TYPES),
                },
            ],
        ),
        _stats(
            "item",
            "item_stats",
            [
                {"name": "comments", "kind": "counter", "action": "comment"},
                {"name": "shares", "kind": "counter", "action": "share"},
            ],
        ),
        {
            "name": "user_item",
            "entity": "user_item",
            "features": [
                {"name": "views", "kind": "counter", "action": "view"},
                {"name": "last_view_ts", "kind": "last_seen", "action": "view"},
            ],
        },
    ],
    "models": [
        {
            "name": "ranker",
            "tier": "tier2",
            "feature_groups": ["user_stats", "item_stats", "user_item"],
            "request_features": [{"name": "position", "default": 0}],
        },
    ],
}


def builtin_projects() -> dict[str, ProjectFeatures]:
    """The shipped projects, validated."""
    return {
        "movielens": ProjectFeatures.model_validate(MOVIELENS),
        "memes": ProjectFeatures.model_validate(MEMES),
    }
