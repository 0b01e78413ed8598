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
            # Stored for the recency below; an absolute time is no model input.
            {"name": "last_view_ts", "kind": "last_seen", "action": "view", "column": False},
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
    # Stored for mean_rating; the raw sum only restates views x mean.
    {"name": "rating_sum", "kind": "counter", "action": "view", "agg": "sum", "column": False},
]
# Recent popularity without windows to expire: views decayed by half every 30 days / year.
_RECENT = [
    {"name": "views_decayed_30d", "kind": "counter", "action": "view", "half_life_days": 30},
    {"name": "views_decayed_365d", "kind": "counter", "action": "view", "half_life_days": 365},
]
_MEAN_RATING = {
    "name": "mean_rating",
    "kind": "rate",
    "numerator": "rating_sum",
    "denominator": "views",
    "prior_mean": 3.5,
    "prior_weight": 5,
}

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""MovieLens genres, in the stable column order of the genre features."""


def _by_genre(name: str, action: str) -> dict[str, Any]:
    # Counted per genre of the movie (its item data), resolved when the event is written.
    return {
        "name": name,
        "kind": "counter",
        "action": action,
        "by": "genre",
        "values": list(GENRES),
        "column": False,
    }


MOVIELENS: dict[str, Any] = {
    "feature_groups": [
        _stats("user", "user_stats", [*_RATING]),
        _stats("item", "item_stats", [*_RATING, *_RECENT]),
        {
            "name": "user_item",
            "entity": "user_item",
            "features": [{"name": "views", "kind": "counter", "action": "view"}],
        },
        {
            # A user's views and smiles per genre: read only through the affinities below.
            "name": "user_genres",
            "entity": "user",
            "features": [
                _by_genre("views_by_genre", "view"),
                _by_genre("smiles_by_genre", "smile"),
            ],
        },
        {
            # Static: the movie's genres (multi-hot) and release year, from movies.csv.
            "name": "item_attrs",
            "entity": "item",
            "features": [
                {"name": "genre", "kind": "attribute", "attribute": "genres", "values": GENRES},
                {"name": "year", "kind": "attribute", "attribute": "year", "default": 0},
            ],
        },
    ],
    "models": [
        {
            "name": "ranker",
            "tier": "tier2",
            # user_item: a user's past views of a candidate, so serving drops seen movies.
            "feature_groups": [
                "user_stats",
                "item_stats",
                "user_item",
                "user_genres",
                "item_attrs",
            ],
            # Of a user's views (smiles), the share in the candidate's genres.
            "affinities": [
                {
                    "name": "genre_view_share",
                    "user": "user_genres.views_by_genre",
                    "item": "item_attrs.genre",
                },
                {
                    "name": "genre_smile_share",
                    "user": "user_genres.smiles_by_genre",
                    "item": "item_attrs.genre",
                },
            ],
            # Filled per candidate by the platform, the same way in training and serving.
            "request_features": [
                {"name": "tier1_score", "default": 0.0},
                {"name": "tier1_rank", "default": 200.0},
                {"name": "popular_rank", "default": 300.0},
            ],
            # Tier one's 200 best, then 100 of recent popularity (its fallback row). A user
            # new to tier one is new to MovieLens: the ranker knows nothing more, and
            # re-ranking recent popularity for them measured worse (bench/quality.py).
            "candidates": {"tier_one": 200, "popular": 100, "rerank_cold": False},
        },
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
for _group in MOVIELENS["feature_groups"][:2]:
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
        {
            "name": "item_attrs",
            "entity": "item",
            "features": [
                {
                    "name": "content_type",
                    "kind": "attribute",
                    "attribute": "content_type",
                    "values": list(CONTENT_TYPES),
                }
            ],
        },
    ],
    "models": [
        {
            "name": "ranker",
            "tier": "tier2",
            "feature_groups": ["user_stats", "item_stats", "user_item", "item_attrs"],
            "affinities": [
                {
                    "name": "type_smile_share",
                    "user": "user_stats.smiles_by_type",
                    "item": "item_attrs.content_type",
                }
            ],
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
