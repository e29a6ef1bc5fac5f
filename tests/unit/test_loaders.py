"""Loaders: good files parse, every bad file gives a one-line LoadError at the right line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nearline_rec.data.loaders import (
    LoadError,
    Movie,
    Rating,
    iter_ratings,
    read_embeddings,
    read_movies,
    read_ratings,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def expect_error(call, path: Path, line: int | None, fragment: str) -> LoadError:
    with pytest.raises(LoadError) as info:
        call()
    err = info.value
    assert err.path == str(path)
    assert err.line == line
    assert fragment in err.problem
    text = str(err)
    assert "\n" not in text
    where = str(path) if line is None else f"{path}:{line}"
    assert text == f"{where}: {err.problem}"
    return err


# --- LoadError --------------------------------------------------------------


def test_load_error_is_one_line_value_error():
    err = LoadError("a/b.csv", 7, "bad\nthing  here")
    assert isinstance(err, ValueError)
    assert str(err) == "a/b.csv:7: bad thing here"
    assert str(LoadError("x.npy", None, "empty")) == "x.npy: empty"


# --- movies.csv ---------------------------------------------------------------

MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    "42,Untitled Project,(no genres listed)\n"
    "\n"
    "99,Amélie (2001),Comedy|Romance\n"
)


def test_read_movies_parses_fields(tmp_path):
    movies = read_movies(write(tmp_path, "movies.csv", MOVIES))
    assert movies == [
        Movie(
            "1",
            "Toy Story (1995)",
            ("Adventure", "Animation", "Children", "Comedy", "Fantasy"),
            1995,
        ),
        Movie("11", "American President, The (1995)", ("Comedy", "Drama", "Romance"), 1995),
        Movie("42", "Untitled Project", (), None),
        Movie("99", "Amélie (2001)", ("Comedy", "Romance"), 2001),
    ]


def test_read_movies_accepts_bom_and_crlf(tmp_path):
    path = write(tmp_path, "movies.csv", b"\xef\xbb\xbf" + MOVIES.replace("\n", "\r\n").encode())
    assert [m.item_id for m in read_movies(path)] == ["1", "11", "42", "99"]


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("movieId,name,genres\n1,A (1999),Drama\n", 1, "expected header"),
        ("movieId,title,genres\n1,A (1999),Drama\n2,B (2000)\n", 3, "expected 3 fields"),
        ("movieId,title,genres\n1,A (1999),Drama\n2,B,Drama\n1,C,Drama\n", 4, "duplicate movieId"),
        ("movieId,title,genres\n1,A (1999),Drama||War\n", 2, "empty genre"),
        ("movieId,title,genres\n,A (1999),Drama\n", 2, "empty movieId"),
        ('movieId,title,genres\n1,A,Drama\n2,"B (1999),Drama\n3,C,War\n', 3, "bad CSV record"),
    ],
)
def test_read_movies_errors(tmp_path, content, line, fragment):
    path = write(tmp_path, "movies.csv", content)
    expect_error(lambda: read_movies(path), path, line, fragment)


def test_read_movies_empty_file(tmp_path):
    path = write(tmp_path, "movies.csv", "")
    expect_error(lambda: read_movies(path), path, None, "empty file")


def test_read_movies_bad_utf8_names_line(tmp_path):
    path = write(tmp_path, "movies.csv", b"movieId,title,genres\n1,A,Drama\n2,Caf\xe9,Drama\n")
    expect_error(lambda: read_movies(path), path, 3, "not valid UTF-8: byte 0xe9 at column 6")


def test_missing_file_is_load_error(tmp_path):
    path = tmp_path / "nope.csv"
    expect_error(lambda: read_movies(path), path, None, "no such file")


# --- ratings.csv --------------------------------------------------------------

RATINGS = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n7,5,5,1e9\n"


def test_read_ratings_parses_fields(tmp_path):
    ratings = read_ratings(write(tmp_path, "ratings.csv", RATINGS))
    assert ratings == [
        Rating("1", "31", 2.5, 1260759144.0),
        Rating("1", "1029", 3.0, 1260759179.0),
        Rating("7", "5", 5.0, 1e9),
    ]


def test_iter_ratings_streams_rows_before_a_bad_line(tmp_path):
    path = write(tmp_path, "ratings.csv", RATINGS + "8,9,zz,1\n")
    it = iter_ratings(path)
    assert next(it).item_id == "31"
    assert next(it).item_id == "1029"
    assert next(it).item_id == "5"
    expect_error(lambda: next(it), path, 5, "rating 'zz' is not a number")


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("1,2,5.5,100", "outside [0.5, 5]"),
        ("1,2,0,100", "outside [0.5, 5]"),
        ("1,2,nan,100", "not finite"),
        ("1,2,4.0,soon", "timestamp 'soon' is not a number"),
        ("1,2,4.0,inf", "timestamp 'inf' is not finite"),
        ("1,2,4.0", "expected 4 fields"),
        (",2,4.0,100", "empty userId or movieId"),
    ],
)
def test_read_ratings_errors(tmp_path, row, fragment):
    path = write(tmp_path, "ratings.csv", RATINGS + row + "\n")
    expect_error(lambda: read_ratings(path), path, 5, fragment)


def test_read_ratings_header_and_encoding(tmp_path):
    path = write(tmp_path, "ratings.csv", "user,item,rating,ts\n1,2,3,4\n")
    expect_error(lambda: read_ratings(path), path, 1, "expected header")
    path = write(tmp_path, "r2.csv", RATINGS.encode() + b"\xff,2,3,4\n")
    expect_error(lambda: read_ratings(path), path, 5, "not valid UTF-8")


# --- embeddings: item2vec text --------------------------------------------------


def test_item2vec_text(tmp_path):
    path = write(tmp_path, "emb.txt", "10:0.5 -1 2e-3\n\nabc:1 2 3\n")
    ids, matrix = read_embeddings(path)
    assert ids == ["10", "abc"]
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, [[0.5, -1, 0.002], [1, 2, 3]], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".vec", ".emb", ".TXT"])
def test_item2vec_other_suffixes(tmp_path, suffix):
    ids, matrix = read_embeddings(write(tmp_path, "e" + suffix, "1:1 2\n2:3 4\n"))
    assert ids == ["1", "2"] and matrix.shape == (2, 2)


def test_item2vec_word2vec_header(tmp_path):
    ids, matrix = read_embeddings(write(tmp_path, "e.vec", "2 3\n1:1 2 3\n2:4 5 6\n"))
    assert ids == ["1", "2"] and matrix.shape == (2, 3)


def test_item2vec_header_disagreeing(tmp_path):
    path = write(tmp_path, "e.vec", "3 2\n1:1 2\n2:4 5\n")
    expect_error(lambda: read_embeddings(path), path, None, "header says 3 rows, found 2")
    path = write(tmp_path, "f.vec", "2 3\n1:1 2\n2:4 5\n")
    expect_error(lambda: read_embeddings(path), path, 2, "expected 3 values (header on line 1)")


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("1:1 2 3\n2:1 x 3\n", 2, "value 2 'x' is not a number"),
        ("1:1 2 3\n2:1 2\n", 2, "expected 3 values (line 1), got 2"),
        ("1:1 2 3\n\n2:1 nan 3\n", 3, "value 2 'nan' is not finite"),
        ("1:1 2 3\n2:1 2 -inf\n", 2, "value 3 '-inf' is not finite"),
        ("1:1 2 3\n2:1 2 1e39\n", 2, "out of float32 range"),
        ("1:1 2 3\n2:1 2 3\n1:4 5 6\n", 3, "duplicate id '1' (first on line 1)"),
        ("1:1 2 3\n2 1 2 3\n", 2, "no ':' found"),
        ("1:1 2 3\n:1 2 3\n", 2, "empty id"),
        ("1:1 2 3\n2:\n", 2, "no values"),
        (b"1:1 2 3\n2:1 2 3\n3:\x80 2 3\n", 3, "not valid UTF-8"),
    ],
)
def test_item2vec_errors(tmp_path, content, line, fragment):
    path = write(tmp_path, "emb.txt", content)
    expect_error(lambda: read_embeddings(path), path, line, fragment)


def test_item2vec_expected_dim_names_the_setting(tmp_path):
    path = write(tmp_path, "emb.txt", "1:1 2 3\n")
    err = expect_error(
        lambda: read_embeddings(path, expected_dim=4),
        path,
        None,
        "the vectors have 3 dimensions but NEARLINE_ITEMS__EMBEDDING_DIM is 4",
    )
    assert "set NEARLINE_ITEMS__EMBEDDING_DIM=3" in err.problem
    assert read_embeddings(path, expected_dim=3)[1].shape == (1, 3)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_embeddings_empty_file(tmp_path, content):
    path = write(tmp_path, "emb.txt", content)
    expect_error(lambda: read_embeddings(path), path, None, "empty file")


# The layout of SparrowRecSys' item2vecEmb.csv: item2vec text in a file named .csv.
SPARROW_LIKE = "".join(
    f"{item}:" + " ".join(f"{(item * 7 + j) % 11 / 5 - 1:.6f}" for j in range(10)) + "\n"
    for item in (710, 205, 45)
)


@pytest.mark.parametrize(
    ("name", "content", "ids", "dim"),
    [
        ("item2vecEmb.csv", SPARROW_LIKE, ["710", "205", "45"], 10),
        ("emb.txt", "a,1,2\nb,3,4\n", ["a", "b"], 2),  # CSV in a .txt
        ("emb", "2 3\n1:1 2 3\n2:4 5 6\n", ["1", "2"], 3),  # no extension, w2v header
        ("emb.parquet", "id,x,y\nk:1,0.5,0.25\n", ["k:1"], 2),  # ':' after a comma: CSV
    ],
)
def test_format_is_sniffed_from_content(tmp_path, name, content, ids, dim):
    got_ids, matrix = read_embeddings(write(tmp_path, name, content))
    assert got_ids == ids and matrix.shape == (len(ids), dim)


def test_npy_is_told_by_magic_bytes(tmp_path):
    ids, matrix = _matrix()
    np.save(tmp_path / "m.npy", matrix)
    (tmp_path / "m.npy").rename(tmp_path / "m.bin")
    (tmp_path / "m.bin.ids").write_text("\n".join(ids) + "\n")
    got_ids, got = read_embeddings(tmp_path / "m.bin", ids_path=tmp_path / "m.bin.ids")
    assert got_ids == ids
    np.testing.assert_array_equal(got, matrix)


# --- embeddings: CSV and npy round trips ------------------------------------------


def _matrix(n: int = 5, d: int = 4) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    return [f"item-{i}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize("header", [True, False])
def test_csv_round_trip(tmp_path, header):
    ids, matrix = _matrix()
    lines = ["id," + ",".join(f"v{j}" for j in range(matrix.shape[1]))] if header else []
    lines += [
        i + "," + ",".join(repr(float(v)) for v in row) for i, row in zip(ids, matrix, strict=True)
    ]
    got_ids, got = read_embeddings(write(tmp_path, "emb.csv", "\n".join(lines) + "\n"))
    assert got_ids == ids
    np.testing.assert_array_equal(got, matrix)


def test_csv_errors(tmp_path):
    path = write(tmp_path, "emb.csv", "id,a,b\n1,0.1,0.2\n2,0.3,oops\n")
    expect_error(lambda: read_embeddings(path), path, 3, "value 2 'oops' is not a number")
    # A first row with a number in it is data, so a typo there is reported, not skipped.
    path = write(tmp_path, "e2.csv", "1,0.1,x\n2,0.3,0.4\n")
    expect_error(lambda: read_embeddings(path), path, 1, "value 2 'x' is not a number")
    path = write(tmp_path, "e3.csv", "1,0.1,0.2\n2,0.3\n")
    expect_error(lambda: read_embeddings(path), path, 2, "expected 2 values (line 1), got 1")


def test_npy_round_trip_with_default_ids_file(tmp_path):
    ids, matrix = _matrix()
    np.save(tmp_path / "vectors.npy", matrix)
    (tmp_path / "vectors.ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    got_ids, got = read_embeddings(tmp_path / "vectors.npy")
    assert got_ids == ids
    np.testing.assert_array_equal(got, matrix)


def test_npy_explicit_ids_path_and_float64(tmp_path):
    ids, matrix = _matrix()
    np.save(tmp_path / "m.npy", matrix.astype(np.float64))
    write(tmp_path, "names.txt", "\n".join(ids))
    got_ids, got = read_embeddings(tmp_path / "m.npy", ids_path=tmp_path / "names.txt")
    assert got_ids == ids and got.dtype == np.float32
    np.testing.assert_array_equal(got, matrix)


def test_npy_errors(tmp_path):
    ids, matrix = _matrix()
    npy = tmp_path / "m.npy"
    np.save(npy, matrix)
    ids_path = tmp_path / "m.ids.txt"
    expect_error(lambda: read_embeddings(npy), ids_path, None, "no such file")
    write(tmp_path, "m.ids.txt", "\n".join(ids[:-1]) + "\n")
    expect_error(lambda: read_embeddings(npy), ids_path, None, "4 ids but m.npy has 5 rows")
    write(tmp_path, "m.ids.txt", "a\nb\na\nc\nd\n")
    expect_error(lambda: read_embeddings(npy), ids_path, 3, "duplicate id 'a' (first on line 1)")
    write(tmp_path, "m.ids.txt", "a\nb\n\nc\nd\ne\n")
    expect_error(lambda: read_embeddings(npy), ids_path, 3, "empty id")
    write(tmp_path, "m.ids.txt", b"a\nb\nc\n\xc3(\ne\n")
    expect_error(lambda: read_embeddings(npy), ids_path, 4, "not valid UTF-8")
    write(tmp_path, "m.ids.txt", "\n".join(ids) + "\n")
    expect_error(
        lambda: read_embeddings(npy, expected_dim=8),
        npy,
        None,
        "the vectors have 4 dimensions but NEARLINE_ITEMS__EMBEDDING_DIM is 8",
    )
    bad = matrix.copy()
    bad[3, 2] = np.nan
    np.save(npy, bad)
    expect_error(lambda: read_embeddings(npy), npy, None, "row 3 column 2")
    np.save(npy, matrix[0])
    expect_error(lambda: read_embeddings(npy), npy, None, "expected a 2-D matrix")
    npy.write_bytes(b"not numpy at all")
    expect_error(lambda: read_embeddings(npy), npy, None, "not a readable .npy file")


# --- friend graph and plays (HetRec 2011 Last.fm formats) -------------------------------


def test_friend_pairs_tab_or_comma_with_or_without_a_header(tmp_path):
    from nearline_rec.data.loaders import read_pairs

    hetrec = tmp_path / "user_friends.dat"
    hetrec.write_text("userID\tfriendID\r\n2\t275\r\n2\t428\r\n")
    assert read_pairs(hetrec) == [("2", "275"), ("2", "428")]
    csv = tmp_path / "pairs.csv"
    csv.write_text("alice,bob\n\nbob, carol\n")
    assert read_pairs(csv) == [("alice", "bob"), ("bob", "carol")]
    named = tmp_path / "named.csv"
    named.write_text("follower,followee\nalice,bob\n")
    assert read_pairs(named) == [("alice", "bob")]


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("2101\n25434\n2\t275\n", ":1:", "expected two user ids"),  # counts instead of a header
        ("1,2\n3,3\n", ":2:", "cannot be its own friend"),
        ("1,2\n1,2,3\n", ":2:", "got 3 field(s)"),
        ("1,\n", ":1:", "expected two user ids"),
        ("\n\n", "", "no user pairs found"),
    ],
)
def test_a_bad_friends_file_is_one_line_naming_file_and_line(tmp_path, text, where, says):
    from nearline_rec.data.loaders import read_pairs

    path = tmp_path / "friends.dat"
    path.write_text(text)
    with pytest.raises(LoadError) as err:
        read_pairs(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}") and says in msg and "\n" not in msg


def test_plays_with_a_header_and_bad_weights(tmp_path):
    from nearline_rec.data.loaders import read_plays

    path = tmp_path / "user_artists.dat"
    path.write_text("userID\tartistID\tweight\n2\t51\t13883\n2\t52\t11690\n")
    assert read_plays(path) == [("2", "51", 13883.0), ("2", "52", 11690.0)]
    path.write_text("2\t51\t13883\n2\t52\tlots\n")
    with pytest.raises(LoadError, match=r"user_artists.dat:2: weight 'lots' is not a number"):
        read_plays(path)


def test_relations_from_pairs_name_the_edge_and_go_both_ways_on_request():
    from nearline_rec.producer import relations_from_pairs
    from nearline_rec.records import decode_relation

    rels = relations_from_pairs([("2", "275")], action="add", timestamp=1.5, both_ways=True)
    assert [(r.follower, r.followee, r.action) for r in rels] == [
        ("2", "275", "add"),
        ("275", "2", "add"),
    ]
    assert rels[0].event_id == "rel-2-275-add-1500"
    assert all(decode_relation(r.key(), r.encode()) == r for r in rels)
