"""CLI edges that need no services: bad files and bad settings give one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from nearline_rec.tools.cli import main

REPO = Path(__file__).resolve().parents[2]


def _movies(tmp_path: Path) -> Path:
    p = tmp_path / "movies.csv"
    p.write_text("movieId,title,genres\n1,A (1999),Drama\n2,B (2001),Comedy|Drama\n")
    return p


def test_load_items_bad_embedding_line_is_one_line_and_publishes_nothing(tmp_path, monkeypatch):
    # An unreachable broker proves nothing was attempted: the file fails first.
    monkeypatch.setenv("NEARLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "3")
    emb = tmp_path / "emb.txt"
    emb.write_text("1:0.1 0.2 0.3\n2:0.1 oops 0.3\n")
    res = CliRunner().invoke(
        main, ["load-items", "--movies", str(_movies(tmp_path)), "--embeddings", str(emb)]
    )
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{emb}:2" in lines[0]


def test_load_items_wrong_dimension_names_the_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "3")
    emb = tmp_path / "emb.npy"
    np.save(emb, np.ones((2, 4), dtype=np.float32))
    (tmp_path / "emb.ids.txt").write_text("1\n2\n")
    res = CliRunner().invoke(
        main, ["load-items", "--movies", str(_movies(tmp_path)), "--embeddings", str(emb)]
    )
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and "dimension" in res.output.lower()


def test_replay_bad_ratings_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NEARLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,2,4.0,100\n1,3,9.5,101\n")
    res = CliRunner().invoke(main, ["replay", str(ratings)])
    assert res.exit_code == 1
    assert f"{ratings}:3" in res.output and len(res.output.strip().splitlines()) == 1


def test_recs_with_invalid_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("NEARLINE_REDIS__URL", "http://nowhere")
    res = CliRunner().invoke(main, ["recs", "42"])
    assert res.exit_code == 1
    assert "NEARLINE_REDIS__URL" in res.output and len(res.output.strip().splitlines()) == 1


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=60,
    )


def test_worker_stops_at_start_on_invalid_setting():
    res = _run(["nearline_rec.tools.cli", "worker"], NEARLINE_TOPICS__PARTITIONS="0")
    assert res.returncode != 0
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "NEARLINE_TOPICS__PARTITIONS" in err[0], res.stderr


def test_faust_entry_point_stops_on_invalid_setting():
    res = _run(["faust", "-A", "nearline_rec.worker", "worker"], NEARLINE_WORKER__BATCH_SIZE="lots")
    assert res.returncode != 0
    assert "invalid setting NEARLINE_WORKER__BATCH_SIZE" in res.stderr
    assert "Traceback" not in res.stderr


def test_tune_lsh_calibrates_on_an_embedding_file_as_the_worker_does(tmp_path, monkeypatch):
    from nearline_rec.core.lsh_tune import clustered_vectors

    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "16")
    vecs = clustered_vectors(3000, 16, seed=3)
    emb = tmp_path / "emb.txt"
    emb.write_text(
        "".join(f"{i}:" + " ".join(f"{x:.5f}" for x in v) + "\n" for i, v in enumerate(vecs))
    )
    out = tmp_path / "tune.json"
    res = CliRunner().invoke(
        main,
        ["tune-lsh", "--embeddings", str(emb), "--queries", "50", "--budget", "2"]
        + ["--json-out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "measured recall@10" in res.output and "held-out taste queries" in res.output
    import json

    doc = json.loads(out.read_text())
    assert doc["index"] in ("lsh", "exact") and doc["heldout_queries"] == 50
    assert doc["meets_target"] == (doc["recall"] >= 0.95)
    assert doc["trials"] and all(0.0 <= r["recall"] <= 1.0 for r in doc["trials"])
