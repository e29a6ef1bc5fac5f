"""`nearline load-items` on files as item2vec pipelines write them: item2vec text in a file
named .csv (the layout of SparrowRecSys' item2vecEmb.csv), 10 dimensions, and a movie
without a vector that stays in the catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nearline_rec.core.catalog import ItemCatalog
from nearline_rec.core.events import encode_item_update
from nearline_rec.producer import item_updates_from_files
from nearline_rec.records import decode_item_update
from nearline_rec.tools.cli import main

DATA = Path(__file__).parent / "data" / "item2vec-csv"
MOVIES, EMB = DATA / "movies.csv", DATA / "item2vecEmb.csv"


def test_item2vec_csv_joins_with_movies_and_keeps_the_movie_without_a_vector():
    updates, unmatched = item_updates_from_files(MOVIES, EMB, dim=10)
    assert unmatched == ["3"]
    by_id = {u.item_id: u for u in updates}
    assert set(by_id) == {"1", "2", "3", "45", "205", "710"}
    assert by_id["710"].embedding is not None and by_id["710"].embedding.shape == (10,)
    assert by_id["3"].embedding is None and by_id["3"].genres == ("Comedy", "Romance")
    # through the topic encoding and into a catalogue, as a worker would
    cat = ItemCatalog(10)
    cat.upsert_many([decode_item_update(None, encode_item_update(u), dim=10) for u in updates])
    assert len(cat) == 6 and cat.vector("3") is None and cat.vector("710") is not None
    assert cat.genre_mask("Romance")[cat.key("3")]
    assert "3" not in {cat.item_id(k) for k in cat.search(np.ones(10), 10)[0].tolist()}


@pytest.fixture
def published(monkeypatch):
    import nearline_rec.kafka_clients
    import nearline_rec.producer

    got: list = []
    monkeypatch.setattr(nearline_rec.kafka_clients, "ensure_topics", lambda s: [])
    monkeypatch.setattr(
        nearline_rec.producer,
        "publish_items",
        lambda s, updates, progress=None: got.extend(updates) or len(got),
    )
    return got


def test_cli_loads_the_files_unchanged_with_the_files_dimension(monkeypatch, published):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "10")
    res = CliRunner().invoke(
        main, ["load-items", "--movies", str(MOVIES), "--embeddings", str(EMB)]
    )
    assert res.exit_code == 0, res.output
    assert "published 6 items" in res.output
    assert "1 movies have no embedding: kept for the genre, trending and newest" in res.output
    assert len(published) == 6


def test_cli_names_the_dimension_setting(monkeypatch, published):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "32")
    res = CliRunner().invoke(
        main, ["load-items", "--movies", str(MOVIES), "--embeddings", str(EMB)]
    )
    assert res.exit_code != 0 and published == []
    line = res.output.strip()
    assert "\n" not in line
    assert (
        "item2vecEmb.csv: the vectors have 10 dimensions but NEARLINE_ITEMS__EMBEDDING_DIM is 32"
        in line
    )
    assert "set NEARLINE_ITEMS__EMBEDDING_DIM=10" in line
