"""The serve process's list answer from stored item words (nearline_rec.serve_lists) equals
the general read path's (`codec.list_from_record` + `ReadResult.response`) for any record,
registry and catalog mirror; `codec.decode_words` agrees with `codec.decode` (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nearline_rec.core import fastjson
from nearline_rec.schemas import validate
from nearline_rec.serve_lists import EntryBook
from nearline_rec.serving import ReadResult
from nearline_rec.storage import codec
from nearline_rec.storage.codes import CodeBook

from .test_codec import records

NOW = 4.2e9
STALE_AFTER = 600.0


def small_records() -> st.SearchStrategy[codec.UserRecord]:
    """Records whose codes come from a small range, so that books name some and not others."""
    return records().map(
        lambda r: codec.UserRecord(
            r.version, r.generated_at, r.event_time, r.n_events, r.mode,
            r.model_code % 4, r.embedding_code % 4, r.variant_code % 4, r.embedding,
            tuple(codec.RecordItem(1 + c % 12, ch) for c, ch in r.items),
        )
    )  # fmt: skip


@st.composite
def worlds(draw: st.DrawFn) -> tuple[CodeBook, dict[str, tuple[str | None, bool]]]:
    """A registry copy naming some item and string codes, and a mirror knowing some items."""
    book = CodeBook()
    for code in draw(st.sets(st.integers(1, 12))):
        book.item_id[code] = f"i{code}"
    for code in draw(st.sets(st.integers(1, 3))):
        book.string[code] = f"s{code}"
    meta = {}
    for code in draw(st.sets(st.integers(1, 12))):
        title = draw(st.one_of(st.none(), st.text(max_size=5)))
        meta[f"i{code}"] = (title, draw(st.booleans()))
    return book, meta


def body(book: EntryBook, *args: object) -> dict:
    """The serve process's answer (JSON bytes) read back."""
    return fastjson.loads(book.answer(*args))  # type: ignore[arg-type]


def general_answer(raw: bytes, codes: CodeBook, meta: dict, k: int) -> dict:
    rec = codec.decode(raw, embedding=False)
    value = codec.list_from_record(rec, "u1", item_id=codes.item_id.get, string=codes.string.get)
    return ReadResult("u1", "redis", value).response(
        k, NOW, STALE_AFTER,
        titles=lambda i: None if i not in meta else meta[i][0],
        keep=lambda i: i not in meta or meta[i][1],
    )  # fmt: skip


def serve_answer(raw: bytes, codes: CodeBook, meta: dict, k: int) -> dict:
    """What the serve process answers: items the mirror has not seen are read as (no title,
    recommendable), as its read of their missing mirror entry does."""
    book = EntryBook(codes, dict(meta))
    head = codec.decode_words(raw)
    unknown = book.unknown(head)
    for i in book.missing_meta(unknown):
        book.meta[i] = (None, True)
    book.learn(unknown)
    return body(book, "u1", "redis", head, k, NOW, STALE_AFTER)


@settings(max_examples=400, deadline=None)
@given(small_records(), worlds(), st.integers(1, 30))
def test_the_answer_from_words_equals_the_general_read_path(rec, world, k):
    codes, meta = world
    raw = codec.encode(rec)
    got = serve_answer(raw, codes, meta, k)
    assert got == general_answer(raw, codes, meta, k)
    validate("recommendation-response", got)


@settings(max_examples=300, deadline=None)
@given(records())
def test_decode_words_agrees_with_decode(rec):
    raw = codec.encode(rec)
    head = codec.decode_words(raw)
    full = codec.decode(raw)
    assert (head.version, head.generated_at, head.mode) == (
        full.version,
        full.generated_at,
        full.mode,
    )
    assert (head.model_code, head.variant_code) == (full.model_code, full.variant_code)
    assert tuple(map(codec.word_item, head.words)) == full.items


@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_to_words_or_raise_corrupt(raw):
    try:
        head = codec.decode_words(raw)
    except codec.CorruptRecord:
        return
    assert codec.decode_words(codec.encode(codec.decode(raw))) == head


def test_item_code_zero_is_refused_where_its_word_is_named():
    rec = codec.UserRecord(3, 1.0, 1.0, 1, "personal", 0, 0, 0, None, ((5, "genre"),))
    raw = bytearray(codec.encode(rec))
    raw[-4:] = (codec.CHANNEL_CODE["genre"] << 28).to_bytes(4, "little")  # code 0
    head = codec.decode_words(bytes(raw))
    with pytest.raises(codec.CorruptRecord, match="item code 0"):
        EntryBook(CodeBook(), {}).unnamed_codes(list(head.words), head)


def test_an_item_changed_in_the_mirror_is_answered_anew():
    codes = CodeBook()
    codes.item_id.update({1: "a", 2: "b"})
    meta = {"a": ("A", True), "b": ("B", True)}
    book = EntryBook(codes, meta)
    rec = codec.UserRecord(
        1, 1.0, 1.0, 1, "personal", 0, 0, 0, None, ((1, "genre"), (2, "embedding"))
    )
    head = codec.decode_words(codec.encode(rec))
    book.learn(book.unknown(head))
    assert [i["title"] for i in body(book, "u", "cache", head, 10, NOW, 1.0)["items"]] == ["A", "B"]
    meta["b"] = ("B", False)  # retired: the reader drops its entry when Redis says it changed
    book.forget_item("b")
    assert book.unknown(head) == [head.words[1]]
    book.learn(book.unknown(head))
    assert [i["item_id"] for i in body(book, "u", "cache", head, 10, NOW, 1.0)["items"]] == ["a"]
    book.clear()
    assert body(book, "u", "cache", head, 10, NOW, 1.0)["items"] == []


@settings(max_examples=300, deadline=None)
@given(
    small_records(),
    worlds(),
    st.integers(1, 30),
    st.floats(0, 5e9),
    st.floats(0.001, 1e6),
)
def test_a_prepared_answer_finished_at_any_time_is_the_body_as_json(
    rec, world, k, now, stale_after
):
    codes, meta = world
    book = EntryBook(codes, dict(meta))
    head = codec.decode_words(codec.encode(rec))
    unknown = book.unknown(head)
    for i in book.missing_meta(unknown):
        book.meta[i] = (None, True)
    book.learn(unknown)
    ready = book.prepared("u1", "cache", head, k)
    assert ready[:2] == (k, book.generation)
    got = fastjson.loads(EntryBook.finish(ready, head, now, stale_after))
    assert got == body(book, "u1", "cache", head, k, now, stale_after)


def test_the_cached_answer_follows_the_mirror_and_k() -> None:
    """A serve process's cached answer is prepared once per list and k, and made again
    when an entry it used changed (the book's generation)."""
    from nearline_rec.serve import Reader, ServeApp
    from nearline_rec.settings import Settings

    app = ServeApp()
    app.settings = Settings()
    reader = app.reader = Reader(app.settings)
    reader.codes.item_id.update({1: "a", 2: "b"})
    reader.meta.update({"a": ("A", True), "b": ("B", True)})
    rec = codec.UserRecord(
        1, 1.0, 1.0, 1, "personal", 0, 0, 0, None, ((1, "genre"), (2, "embedding"))
    )
    head = codec.decode_words(codec.encode(rec))
    reader.book.learn(reader.book.unknown(head))
    reader.cache["u"] = [head, 0.0, None]

    def items(k: int) -> list[str]:
        status, _, body = app._list("u", k, ("cache", head))
        assert status == 200
        return [i["item_id"] for i in fastjson.loads(body)["items"]]

    assert items(10) == ["a", "b"]
    first = reader.cache["u"][2]
    assert items(10) == ["a", "b"] and reader.cache["u"][2] is first  # prepared once
    assert items(1) == ["a"]
    assert items(10) == ["a", "b"]
    reader.meta["b"] = ("B", False)  # retired, as Redis's invalidation of its mirror key says
    reader.book.forget_item("b")
    reader.book.learn(reader.book.unknown(head))
    assert items(10) == ["a"]
