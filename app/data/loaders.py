"""Readers for the files users already have: MovieLens CSV and item embeddings.

Every problem in a file becomes a ``LoadError`` whose message is one line naming
the file and, where it makes sense, the line, so a bad input fails the loading
command with something a person can act on instead of a traceback.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nearline_rec.errors import BadInput

MOVIES_HEADER = ("movieId", "title", "genres")
RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
NO_GENRES = "(no genres listed)"

_YEAR = re.compile(r"\((\d{4})\)\s*$")
_W2V_HEADER = re.compile(r"^\s*(\d+)\s+(\d+)\s*$")
_F32_MAX = float(np.finfo(np.float32).max)


class LoadError(BadInput):
    """A problem in an input file; ``str()`` is ``<file>:<line>: <problem>`` on one line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        # One line whatever the cause: embedded newlines would break log lines.
        self.problem = " ".join(str(problem).split())
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {self.problem}")


@dataclass(frozen=True)
class Movie:
    item_id: str
    title: str
    genres: tuple[str, ...]
    year: int | None


@dataclass(frozen=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    timestamp: float


# --- MovieLens CSV ---------------------------------------------------------


def read_movies(path: str | Path) -> list[Movie]:
    """Read a MovieLens ``movies.csv``; titles are kept whole, year taken from "(YYYY)"."""
    movies: list[Movie] = []
    first_line: dict[str, int] = {}
    for line, row in _csv_rows(path, MOVIES_HEADER):
        if len(row) != 3:
            raise LoadError(path, line, f"expected 3 fields (movieId,title,genres), got {len(row)}")
        item_id, title, genres_field = (f.strip() for f in row)
        if not item_id:
            raise LoadError(path, line, "empty movieId")
        if item_id in first_line:
            raise LoadError(
                path, line, f"duplicate movieId {item_id!r} (first on line {first_line[item_id]})"
            )
        first_line[item_id] = line
        if not title:
            raise LoadError(path, line, "empty title")
        if genres_field in ("", NO_GENRES):
            genres: tuple[str, ...] = ()
        else:
            genres = tuple(g.strip() for g in genres_field.split("|"))
            if any(not g for g in genres):
                raise LoadError(path, line, f"empty genre in {genres_field!r}")
        m = _YEAR.search(title)
        movies.append(Movie(item_id, title, genres, int(m.group(1)) if m else None))
    return movies


def iter_ratings(path: str | Path) -> Iterator[Rating]:
    """Stream a MovieLens ``ratings.csv`` row by row (files of any size)."""
    for line, row in _csv_rows(path, RATINGS_HEADER):
        if len(row) != 4:
            raise LoadError(
                path, line, f"expected 4 fields (userId,movieId,rating,timestamp), got {len(row)}"
            )
        user_id, item_id, rating_s, ts_s = (f.strip() for f in row)
        if not user_id or not item_id:
            raise LoadError(path, line, "empty userId or movieId")
        rating = _finite(path, line, rating_s, "rating")
        if not 0.5 <= rating <= 5.0:
            raise LoadError(path, line, f"rating {rating_s} outside [0.5, 5]")
        yield Rating(user_id, item_id, rating, _finite(path, line, ts_s, "timestamp"))


def read_ratings(path: str | Path) -> list[Rating]:
    return list(iter_ratings(path))


def _csv_rows(path: str | Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the data rows after checking the header."""
    records = _csv_records(path)
    first = next(records, None)
    if first is None:
        raise LoadError(path, None, "empty file")
    line, fields = first
    if tuple(f.strip() for f in fields) != header:
        raise LoadError(
            path, line, f"expected header {','.join(header)!r}, got {','.join(fields)!r}"
        )
    yield from records


def _csv_records(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-blank CSV record; a quoted field may span lines."""
    reader = csv.reader(_decoded(path, _iter_lines(path)), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise LoadError(path, start, f"bad CSV record starting here: {e}") from None
        if any(f.strip() for f in row):
            yield start, row


def _finite(path: str | Path, line: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoadError(path, line, f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LoadError(path, line, f"{what} {text!r} is not finite")
    return value


# --- Line reading with strict UTF-8 ----------------------------------------


def _iter_lines(path: str | Path) -> Iterator[bytes]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise LoadError(path, None, "no such file") from None
    except OSError as e:
        raise LoadError(path, None, f"cannot open: {e.strerror or e}") from None
    with f:
        yield from f


def _decoded(path: str | Path, lines: Iterable[bytes]) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported with its line (and a BOM is allowed)."""
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LoadError(
                path,
                number,
                f"not valid UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}",
            ) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


def _numbered_text(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text without line ending) for every non-blank line."""
    for number, text in enumerate(_decoded(path, _iter_lines(path)), start=1):
        text = text.rstrip("\r\n")
        if text.strip():
            yield number, text


# --- Embeddings -------------------------------------------------------------


DIM_SETTING = "NEARLINE_ITEMS__EMBEDDING_DIM"
_NPY_MAGIC = b"\x93NUMPY"


def read_embeddings(
    path: str | Path,
    *,
    ids_path: str | Path | None = None,
    expected_dim: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """Item ids and a float32 ``(n, d)`` matrix, row i belonging to ids[i].

    The format is told from the content, not the name (item2vec pipelines write their text
    to ``.csv`` files as often as to ``.txt``): a ``.npy`` matrix by its magic bytes, with
    ids one a line in ``ids_path`` or ``<stem>.ids.txt`` beside it; item2vec text
    (``<id>:<v1> <v2> ...``, an optional word2vec-style ``<n> <d>`` first line) when the
    first data line has a ``:`` before any comma; otherwise CSV (``id,v1,...,vd`` with an
    optional header row). The dimension is the file's own (its header or first row); with
    ``expected_dim`` a file of another dimension is refused with a message naming
    NEARLINE_ITEMS__EMBEDDING_DIM.
    """
    path = Path(path)
    kind = sniff_embedding_format(path)
    if kind == "npy":
        ids, matrix = _read_npy(path, ids_path)
    elif kind == "item2vec":
        ids, matrix = _read_item2vec(path)
    else:
        ids, matrix = _read_embedding_csv(path)
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise LoadError(
            path,
            None,
            f"the vectors have {matrix.shape[1]} dimensions but {DIM_SETTING} is "
            f"{expected_dim}: set {DIM_SETTING}={matrix.shape[1]} (for this command and the "
            "workers)",
        )
    return ids, matrix


def sniff_embedding_format(path: Path) -> str:
    """ "npy", "item2vec" or "csv", from the first bytes and the first data line."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise LoadError(path, None, "no such file") from None
    except OSError as e:
        raise LoadError(path, None, f"cannot open: {e.strerror or e}") from None
    if head == _NPY_MAGIC or path.suffix.lower() == ".npy":
        return "npy"  # a damaged .npy is reported as one, not parsed as text
    for _, text in _numbered_text(path):
        if _W2V_HEADER.match(text):
            continue  # "<count> <dim>": look at the first vector line
        colon, comma = text.find(":"), text.find(",")
        return "item2vec" if colon >= 0 and (comma < 0 or colon < comma) else "csv"
    raise LoadError(path, None, "empty file: no embeddings")


class _Rows:
    """Collects (id, vector) rows, checking ids and dimensions as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dim: int | None = None
        self.dim_source: str | None = None
        self.ids: list[str] = []
        self.first_line: dict[str, int] = {}
        self.vectors: list[np.ndarray] = []

    def add(self, line: int, item_id: str, fields: list[str]) -> None:
        if not item_id:
            raise LoadError(self.path, line, "empty id")
        if item_id in self.first_line:
            raise LoadError(
                self.path,
                line,
                f"duplicate id {item_id!r} (first on line {self.first_line[item_id]})",
            )
        if not fields:
            raise LoadError(self.path, line, f"no values for id {item_id!r}")
        if self.dim is None:
            self.dim, self.dim_source = len(fields), f"line {line}"
        elif len(fields) != self.dim:
            raise LoadError(
                self.path,
                line,
                f"expected {self.dim} values ({self.dim_source}), got {len(fields)}",
            )
        self.first_line[item_id] = line
        self.ids.append(item_id)
        self.vectors.append(_parse_floats(self.path, line, fields))

    def result(self) -> tuple[list[str], np.ndarray]:
        if not self.ids:
            raise LoadError(self.path, None, "empty file: no embeddings")
        return self.ids, np.vstack(self.vectors).astype(np.float32)


def _parse_floats(path: Path, line: int, fields: list[str]) -> np.ndarray:
    try:
        values = np.array(fields, dtype=np.float64)
    except ValueError:
        for col, f in enumerate(fields, start=1):
            try:
                float(f)
            except ValueError:
                raise LoadError(path, line, f"value {col} {f!r} is not a number") from None
        raise  # pragma: no cover - numpy rejected something float() accepts
    bad = ~np.isfinite(values) | (np.abs(values) > _F32_MAX)
    if bad.any():
        col = int(np.argmax(bad))
        kind = "not finite" if not np.isfinite(values[col]) else "out of float32 range"
        raise LoadError(path, line, f"value {col + 1} {fields[col]!r} is {kind}")
    return values


def _read_item2vec(path: Path) -> tuple[list[str], np.ndarray]:
    rows = _Rows(path)
    declared: tuple[int, int] | None = None
    for line, text in _numbered_text(path):
        if not rows.ids and declared is None and ":" not in text:
            # word2vec-style "<count> <dim>" header: only two integers and no colon.
            m = _W2V_HEADER.match(text)
            if m:
                declared = int(m.group(1)), int(m.group(2))
                rows.dim, rows.dim_source = declared[1], f"header on line {line}"
                continue
        item_id, colon, values = text.rpartition(":")
        if not colon:
            raise LoadError(path, line, "expected '<id>:<v1> <v2> ...' (no ':' found)")
        rows.add(line, item_id.strip(), values.split())
    ids, matrix = rows.result()
    if declared is not None and declared[0] != len(ids):
        raise LoadError(path, None, f"header says {declared[0]} rows, found {len(ids)}")
    return ids, matrix


def _read_embedding_csv(path: Path) -> tuple[list[str], np.ndarray]:
    rows = _Rows(path)
    for line, row in _csv_records(path):
        fields = [f.strip() for f in row]
        if not rows.ids and _is_header(fields[1:]):
            continue
        rows.add(line, fields[0], fields[1:])
    return rows.result()


def _is_header(values: list[str]) -> bool:
    """A first row is a header only if none of its value columns is a number."""
    for v in values:
        try:
            float(v)
        except ValueError:
            continue
        return False
    return bool(values)


def _read_npy(path: Path, ids_path: str | Path | None) -> tuple[list[str], np.ndarray]:
    ids_file = Path(ids_path) if ids_path is not None else path.with_name(f"{path.stem}.ids.txt")
    try:
        matrix = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise LoadError(path, None, "no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise LoadError(path, None, f"not a readable .npy file: {e}") from None
    if matrix.ndim != 2:
        raise LoadError(path, None, f"expected a 2-D matrix, got shape {matrix.shape}")
    if matrix.dtype.kind not in "fiu":
        raise LoadError(path, None, f"expected a numeric matrix, got dtype {matrix.dtype}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise LoadError(path, None, f"empty matrix (shape {matrix.shape})")
    values = matrix.astype(np.float64, copy=False)
    bad = ~np.isfinite(values) | (np.abs(values) > _F32_MAX)
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise LoadError(
            path, None, f"row {r} column {c}: value {values[r, c]!r} is not a finite float32"
        )
    ids: list[str] = []
    first_line: dict[str, int] = {}
    blank: int | None = None
    for line, text in enumerate(_decoded(ids_file, _iter_lines(ids_file)), start=1):
        item_id = text.strip()
        if not item_id:
            blank = blank or line
            continue
        if blank is not None:
            # A blank line between ids would silently shift every later row.
            raise LoadError(ids_file, blank, "empty id")
        if item_id in first_line:
            raise LoadError(
                ids_file, line, f"duplicate id {item_id!r} (first on line {first_line[item_id]})"
            )
        first_line[item_id] = line
        ids.append(item_id)
    if len(ids) != matrix.shape[0]:
        raise LoadError(
            ids_file, None, f"{len(ids)} ids but {path.name} has {matrix.shape[0]} rows"
        )
    return ids, matrix.astype(np.float32)


# --- Friend graph -----------------------------------------------------------

_ID_MAX = 128
_PAIR_COLUMNS = {
    "userid", "friendid", "user_id", "friend_id", "user", "friend", "follower", "followee",
}  # fmt: skip


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(follower, followee) per line: two user ids separated by a tab or a comma, as the
    HetRec 2011 `user_friends.dat` (userID TAB friendID, a header line first). A first line
    of column names (userID, friendID, follower, followee, ...), or whose fields are not
    numbers while the next line's are, is a header. The whole file is checked before
    anything is used: an error names its file and line."""
    rows: list[tuple[int, list[str]]] = []
    for number, text in _numbered_text(path):
        sep = "\t" if "\t" in text else ","
        rows.append((number, [f.strip() for f in text.split(sep)]))
    if rows and (
        all(f.lower() in _PAIR_COLUMNS for f in rows[0][1])
        or (len(rows) >= 2 and _is_header(rows[0][1]) and not _is_header(rows[1][1]))
    ):
        rows = rows[1:]
    out: list[tuple[str, str]] = []
    for number, fields in rows:
        if len(fields) != 2 or not all(fields):
            raise LoadError(
                path,
                number,
                f"expected two user ids separated by a tab or a comma, got {len(fields)}"
                f" field(s): {'|'.join(fields)[:80]!r}",
            )
        a, b = fields
        for v in fields:
            if len(v) > _ID_MAX or any(ord(c) < 32 or ord(c) == 127 for c in v):
                raise LoadError(path, number, f"user id {v[:40]!r} is not a valid user id")
        if a == b:
            raise LoadError(path, number, f"user {a!r} cannot be its own friend")
        out.append((a, b))
    if not out:
        raise LoadError(path, None, "no user pairs found")
    return out


def read_plays(path: str | Path) -> list[tuple[str, str, float]]:
    """(user, item, weight) per line, tab- or comma-separated, as the HetRec 2011
    `user_artists.dat` (userID TAB artistID TAB weight = play count, a header line first).
    Errors name the file and line."""
    out: list[tuple[str, str, float]] = []
    for n, (number, text) in enumerate(_numbered_text(path)):
        fields = [f.strip() for f in text.split("\t" if "\t" in text else ",")]
        if n == 0 and _is_header(fields):
            continue
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise LoadError(
                path, number, f"expected user, item and weight, got {len(fields)} field(s)"
            )
        weight = _finite(path, number, fields[2], "weight")
        if weight < 0:
            raise LoadError(path, number, f"weight {fields[2]!r} is negative")
        out.append((fields[0], fields[1], weight))
    if not out:
        raise LoadError(path, None, "no plays found")
    return out
