"""Bad files and flags: every command that reads a file, given a malformed one, prints one
line naming the file (and the line, where there is one) and the problem, exits non-zero
and changes nothing: no topic is created, nothing is produced, no output file is written.

Kafka and Redis point at closed ports, and the producer and topic functions are replaced
by ones that record calls, so "nothing published" is checked directly.
"""

# ruff: noqa: E501  (the case tables read best one case per line)
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nearline_rec.tools.cli import main
from tests.reliability_report import report

MOVIES = "movieId,title,genres\n1,A (1999),Drama\n2,B (2001),Comedy|Drama\n3,C (2003),Drama\n"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,3.0,101\n2,1,5.0,102\n2,3,4.5,103\n"
EMB = "1:0.1 0.2 0.3\n2:0.3 0.2 0.1\n3:0.2 0.2 0.2\n"

# name -> file content (bytes), or a builder for binary formats
FILES: dict[str, bytes] = {
    "movies.csv": MOVIES.encode(),
    "ratings.csv": RATINGS.encode(),
    "emb.txt": EMB.encode(),
    # bad lines
    "movies_quote.csv": b'movieId,title,genres\n1,A (1999),Drama\n2,"B (2001)\n',
    "movies_fields.csv": b"movieId,title,genres\n1,A (1999),Drama\n2,B (2001)\n",
    "ratings_number.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,x,101\n",
    "ratings_fields.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,4.0\n",
    "ratings_range.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,9.5,101\n",
    "ratings_time.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,100\n1,2,4.0,soon\n",
    "emb_number.txt": b"1:0.1 0.2 0.3\n2:0.1 oops 0.3\n",
    "emb_nan.txt": b"1:0.1 0.2 0.3\n2:0.1 nan 0.3\n",
    "emb_dup.txt": b"1:0.1 0.2 0.3\n1:0.3 0.2 0.1\n",
    # wrong dimension
    "emb_dim.txt": b"1:0.1 0.2 0.3\n2:0.1 0.3\n",
    "emb_dim.csv": b"id,v1,v2,v3\n1,0.1,0.2,0.3\n2,0.1,0.2,0.3,0.4\n",
    "emb_wide.csv": b"1:0.1 0.2 0.3 0.4\n2:0.4 0.3 0.2 0.1\n",  # item2vec text in a .csv
    # wrong encoding
    "movies_latin1.csv": b"movieId,title,genres\n1,A (1999),Drama\n2,Caf\xe9 (2001),Drama\n",
    "ratings_latin1.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,100\n\xe9,1,4.0,100\n",
    "ratings_utf16.csv": "userId,movieId,rating,timestamp\n1,1,4.0,100\n".encode("utf-16"),
    "emb_latin1.txt": b"1:0.1 0.2 0.3\n\xe9t\xe9:0.1 0.2 0.3\n",
    # empty
    "movies_empty.csv": b"",
    "ratings_empty.csv": b"",
    "emb_empty.txt": b"",
    "movies_header.csv": b"movieId,title,genres\n",
    "ratings_header.csv": b"userId,movieId,rating,timestamp\n",
    # friend graph and plays (HetRec Last.fm formats)
    "friends.dat": b"userID\tfriendID\n2\t275\n275\t2\n",
    "plays.dat": b"userID\tartistID\tweight\n2\t51\t13883\n",
    "friends_counts.dat": b"2101\n25434\n2\t275\n",
    "friends_self.dat": b"1,2\n3,3\n",
    "friends_latin1.dat": b"1\t2\n\xe9\t3\n",
    "friends_empty.dat": b"",
    "plays_weight.dat": b"userID\tartistID\tweight\n2\t51\tmany\n",
}


def _write_files(d: Path) -> None:
    for name, content in FILES.items():
        (d / name).write_bytes(content)
    np.save(d / "emb_dim.npy", np.ones((3, 4), np.float32))
    (d / "emb_dim.ids.txt").write_text("1\n2\n3\n")
    np.save(d / "emb_ids.npy", np.ones((3, 3), np.float32))
    (d / "emb_ids.ids.txt").write_text("1\n2\n")
    (d / "emb_bad.npy").write_bytes(b"\x93NUMPY not really")
    (d / "model.json").write_text("{not json")


# (case id, args, file named in the message, line or None, problem fragment, outputs that
# must not appear)
CASES = [
    # load-items
    ("load-items/movies bad line", ["load-items", "--movies", "movies_quote.csv", "--embeddings", "emb.txt"], "movies_quote.csv", 3, "bad csv", ()),
    ("load-items/movies fields", ["load-items", "--movies", "movies_fields.csv", "--embeddings", "emb.txt"], "movies_fields.csv", 3, "expected 3 fields", ()),
    ("load-items/movies encoding", ["load-items", "--movies", "movies_latin1.csv", "--embeddings", "emb.txt"], "movies_latin1.csv", 3, "utf-8", ()),
    ("load-items/movies empty", ["load-items", "--movies", "movies_empty.csv", "--embeddings", "emb.txt"], "movies_empty.csv", None, "empty", ()),
    ("load-items/movies header only", ["load-items", "--movies", "movies_header.csv", "--embeddings", "emb.txt"], "movies_header.csv", None, "no movies", ()),
    ("load-items/emb bad number", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_number.txt"], "emb_number.txt", 2, "not a number", ()),
    ("load-items/emb nan", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_nan.txt"], "emb_nan.txt", 2, "not finite", ()),
    ("load-items/emb duplicate", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_dup.txt"], "emb_dup.txt", 2, "duplicate", ()),
    ("load-items/emb dimension", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_dim.txt"], "emb_dim.txt", 2, "expected 3 values", ()),
    ("load-items/emb csv dimension", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_dim.csv"], "emb_dim.csv", 3, "expected 3 values", ()),
    ("load-items/emb npy dimension", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_dim.npy"], "emb_dim.npy", None, "NEARLINE_ITEMS__EMBEDDING_DIM is 3", ()),
    ("load-items/emb dimension of the file", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_wide.csv"], "emb_wide.csv", None, "set NEARLINE_ITEMS__EMBEDDING_DIM=4", ()),
    ("load-items/emb npy ids", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_ids.npy"], "emb_ids.ids.txt", None, "rows", ()),
    ("load-items/emb not npy", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_bad.npy"], "emb_bad.npy", None, "npy", ()),
    ("load-items/emb encoding", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_latin1.txt"], "emb_latin1.txt", 2, "utf-8", ()),
    ("load-items/emb empty", ["load-items", "--movies", "movies.csv", "--embeddings", "emb_empty.txt"], "emb_empty.txt", None, "empty", ()),
    ("load-items/emb missing", ["load-items", "--movies", "movies.csv", "--embeddings", "nope.txt"], "nope.txt", None, "no such file", ()),
    # load-relations
    ("load-relations/counts for a header", ["load-relations", "friends_counts.dat"], "friends_counts.dat", 1, "expected two user ids", ()),
    ("load-relations/self", ["load-relations", "friends_self.dat"], "friends_self.dat", 2, "its own friend", ()),
    ("load-relations/encoding", ["load-relations", "friends_latin1.dat"], "friends_latin1.dat", 2, "utf-8", ()),
    ("load-relations/empty", ["load-relations", "friends_empty.dat"], "friends_empty.dat", None, "no user pairs", ()),
    ("load-relations/missing", ["load-relations", "nope.dat"], "nope.dat", None, "no such file", ()),
    ("evaluate/plays weight", ["evaluate", "--plays", "plays_weight.dat", "--relations", "friends.dat", "--out", "ev"], "plays_weight.dat", 2, "not a number", ("ev",)),
    ("evaluate/relations self", ["evaluate", "--plays", "plays.dat", "--relations", "friends_self.dat", "--out", "ev"], "friends_self.dat", 2, "its own friend", ("ev",)),
    # replay
    ("replay/bad number", ["replay", "ratings_number.csv"], "ratings_number.csv", 3, "not a number", ()),
    ("replay/fields", ["replay", "ratings_fields.csv"], "ratings_fields.csv", 3, "expected 4 fields", ()),
    ("replay/rating range", ["replay", "ratings_range.csv"], "ratings_range.csv", 3, "9.5", ()),
    ("replay/timestamp", ["replay", "ratings_time.csv"], "ratings_time.csv", 3, "soon", ()),
    ("replay/encoding", ["replay", "ratings_latin1.csv"], "ratings_latin1.csv", 3, "utf-8", ()),
    ("replay/utf-16", ["replay", "ratings_utf16.csv"], "ratings_utf16.csv", 1, "utf-8", ()),
    ("replay/empty", ["replay", "ratings_empty.csv"], "ratings_empty.csv", None, "empty", ()),
    ("replay/header only", ["replay", "ratings_header.csv"], "ratings_header.csv", None, "no ratings", ()),
    # tune-lsh
    ("tune-lsh/bad number", ["tune-lsh", "--embeddings", "emb_number.txt", "--json-out", "tune.json"], "emb_number.txt", 2, "not a number", ("tune.json",)),
    ("tune-lsh/dimension", ["tune-lsh", "--embeddings", "emb_dim.txt", "--json-out", "tune.json"], "emb_dim.txt", 2, "expected 3 values", ("tune.json",)),
    ("tune-lsh/empty", ["tune-lsh", "--embeddings", "emb_empty.txt", "--json-out", "tune.json"], "emb_empty.txt", None, "empty", ("tune.json",)),
    # train-embeddings
    ("train/ratings bad line", ["train-embeddings", "--ratings", "ratings_number.csv", "--out", "out.txt"], "ratings_number.csv", 3, "not a number", ("out.txt",)),
    ("train/ratings encoding", ["train-embeddings", "--ratings", "ratings_latin1.csv", "--out", "out.txt"], "ratings_latin1.csv", 3, "utf-8", ("out.txt",)),
    ("train/ratings empty", ["train-embeddings", "--ratings", "ratings_empty.csv", "--out", "out.txt"], "ratings_empty.csv", None, "empty", ("out.txt",)),
    ("train/movies bad line", ["train-embeddings", "--ratings", "ratings.csv", "--movies", "movies_quote.csv", "--out", "out.txt"], "movies_quote.csv", 3, "bad csv", ("out.txt",)),
    # evaluate
    ("evaluate/ratings bad line", ["evaluate", "--ratings", "ratings_fields.csv", "--movies", "movies.csv", "--out", "ev"], "ratings_fields.csv", 3, "expected 4 fields", ("ev",)),
    ("evaluate/movies encoding", ["evaluate", "--ratings", "ratings.csv", "--movies", "movies_latin1.csv", "--out", "ev"], "movies_latin1.csv", 3, "utf-8", ("ev",)),
    ("evaluate/emb dimension", ["evaluate", "--ratings", "ratings.csv", "--movies", "movies.csv", "--embeddings", "emb_dim.txt", "--out", "ev"], "emb_dim.txt", 2, "expected 3 values", ("ev",)),
    ("evaluate/movies empty", ["evaluate", "--ratings", "ratings.csv", "--movies", "movies_empty.csv", "--out", "ev"], "movies_empty.csv", None, "empty", ("ev",)),
]  # fmt: skip

# bad flags and settings: one line, non-zero, and they name what was wrong
FLAG_CASES = [
    ("replay --rate -1", ["replay", "ratings.csv", "--rate", "-1"], {}, "--rate"),
    ("replay --limit x", ["replay", "ratings.csv", "--limit", "x"], {}, "--limit"),
    ("replay directory", ["replay", "."], {}, "directory"),
    ("load-items no --movies", ["load-items", "--embeddings", "emb.txt"], {}, "--movies"),
    ("evaluate --plays alone", ["evaluate", "--plays", "plays.dat"], {}, "--relations"),
    ("evaluate without inputs", ["evaluate"], {}, "--ratings"),
    ("unknown command", ["frobnicate"], {}, "frobnicate"),
    ("unknown option", ["recs", "1", "--colour"], {}, "--colour"),
    ("degrade bad mode", ["degrade", "maybe"], {}, "maybe"),
    ("invalid setting", ["recs", "1"], {"NEARLINE_TOPICS__PARTITIONS": "0"}, "NEARLINE_TOPICS__PARTITIONS"),
    ("bad ranking model file", ["evaluate", "--ratings", "ratings.csv", "--movies", "movies.csv", "--embeddings", "emb.txt", "--out", "ev"], {"NEARLINE_RANKING__MODEL_PATH": "model.json"}, "NEARLINE_RANKING__MODEL_PATH"),
    ("worker CPUs not on this host", ["worker"], {"NEARLINE_WORKER__CPUS": "4095"}, "NEARLINE_WORKER__CPUS=4095: Invalid argument"),
    ("bad dimension setting", ["tune-lsh", "--embeddings", "emb.txt"], {"NEARLINE_ITEMS__EMBEDDING_DIM": "1"}, "NEARLINE_ITEMS__EMBEDDING_DIM"),
]  # fmt: skip

started: list[str] = []  # case ids, as each case runs
passed: list[str] = []  # case ids, once every check of the case passed


@pytest.fixture(scope="module", autouse=True)
def bad_files_report():
    yield
    if started:
        report(
            "bad_files",
            cases=len(started),
            one_line_nonzero_nothing_changed=len(passed),
            failed=[case for case in started if case not in passed],
        )


@pytest.fixture
def files(tmp_path, monkeypatch):
    _write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEARLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("NEARLINE_REDIS__URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("NEARLINE_ITEMS__EMBEDDING_DIM", "3")
    calls: list[str] = []

    def recorder(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called for a bad file")

        return fn

    import nearline_rec.kafka_clients
    import nearline_rec.producer

    for mod, name in [
        (nearline_rec.producer, "make_producer"),
        (nearline_rec.producer, "publish_items"),
        (nearline_rec.producer, "produce_events"),
        (nearline_rec.producer, "publish_relations"),
        (nearline_rec.kafka_clients, "ensure_topics"),
    ]:
        monkeypatch.setattr(mod, name, recorder(name))
    return tmp_path, calls


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args,name,line,fragment,outputs", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_file_is_one_line_non_zero_and_changes_nothing(
    request, files, args, name, line, fragment, outputs
):
    d, calls = files
    started.append(request.node.name)
    before = sorted(p.name for p in d.iterdir())
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0, res.output
    msg = _one_line(res.output)
    where = f"{name}:{line}:" if line is not None else f"{name}:"
    assert where in msg, msg
    assert fragment.lower() in msg.lower(), msg
    assert calls == [], calls
    for out in outputs:
        assert not (d / out).exists(), f"{out} was written"
    assert sorted(p.name for p in d.iterdir()) == before
    passed.append(request.node.name)


@pytest.mark.parametrize(
    "args,env,fragment", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES]
)
def test_bad_flag_or_setting_is_one_line_non_zero(request, files, monkeypatch, args, env, fragment):
    d, calls = files
    started.append(request.node.name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = sorted(p.name for p in d.iterdir())
    res = CliRunner().invoke(main, args)
    assert res.exit_code not in (0, None), res.output
    msg = _one_line(res.output)
    assert fragment in msg, msg
    assert calls == []
    assert sorted(p.name for p in d.iterdir()) == before
    passed.append(request.node.name)


def test_help_still_works_and_exits_zero(files):
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and "load-items" in res.output
    res = CliRunner().invoke(main, ["replay", "-h"])
    assert res.exit_code == 0 and "--rate" in res.output


def test_good_files_pass_the_checks(files):
    """The same commands with good files get past the file checks (to the broker)."""
    d, calls = files
    res = CliRunner().invoke(
        main, ["load-items", "--movies", "movies.csv", "--embeddings", "emb.txt"]
    )
    assert calls == ["ensure_topics"], res.output
    calls.clear()
    res = CliRunner().invoke(main, ["replay", "ratings.csv"])
    assert calls == ["ensure_topics"], res.output
    json.dumps(FILES["ratings.csv"].decode())
