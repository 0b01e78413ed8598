"""Item data: MovieLens movies as items, attribute names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from twotier.items import Item, ItemDataError, movielens_items

MOVIELENS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "movielens-small"


def test_movielens_items_carry_title_and_genre_lists() -> None:
    items = {i.item_id: i for i in movielens_items(MOVIELENS)}
    assert len(items) == 9742
    assert items["1"].attributes == {
        "title": "Toy Story (1995)",
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        "year": "1995",
    }
    # The year comes from the title's trailing "(1995)"; a few titles have none.
    no_year = [i for i in items.values() if "year" not in i.attributes]
    assert 0 < len(no_year) < 50
    years = [str(i.attributes["year"]) for i in items.values() if "year" in i.attributes]
    assert all(1900 <= int(y) <= 2030 for y in years)
    no_genres = [i for i in items.values() if i.attributes["genres"] == []]
    assert no_genres, "MovieLens has movies with '(no genres listed)'"


def test_a_malformed_movies_file_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\nx,B,Comedy\n")
    with pytest.raises(ItemDataError, match=r"movies.csv:3"):
        movielens_items(tmp_path)
    with pytest.raises(FileNotFoundError, match="MovieLens folder"):
        movielens_items(tmp_path / "missing")


@pytest.mark.parametrize("name", ["a.b", "$set", "_id", "", "1x"])
def test_attribute_names_follow_document_field_rules(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid attribute name"):
        Item(item_id="1", attributes={name: "x"})
