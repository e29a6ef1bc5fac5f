"""A serve process's personal lists, answered from the record's stored item words.

A user's record is read as its header and its items as stored (`codec.decode_words`: one
word per item, code | channel << 28), and that is what the serve cache holds. Each word
gets one response entry as JSON, made once and shared by every answer that has it: the
item's id, its channel and its title, or nothing for an item the catalog mirror says is
retired. An answer is then one dict lookup per stored item, the entries joined, and the
list's own fields formatted around them, with nothing built or serialized per item: what a
read under many connections can afford (a cached list's answer is prepared once per k).
Entries follow the registry and the item mirror: a word whose item changed in the mirror
is dropped (`forget_item`), and all of them with the registry (`clear`).

The answer is what `ReadResult.response` makes of `codec.list_from_record` of the same
record (tests/unit/test_serve_lists.py holds them equal).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from nearline_rec.core import fastjson
from nearline_rec.core.modes import ListMode
from nearline_rec.storage import codec
from nearline_rec.storage.codes import CodeBook

Meta = tuple[str | None, bool]
"""(title, recommendable) of an item, from the catalog mirror."""


class EntryBook:
    """word -> response entry of one serve process."""

    def __init__(self, codes: CodeBook, meta: dict[str, Meta]) -> None:
        self.codes = codes
        self.meta = meta
        """item id -> (title, recommendable), kept by the reader (shared with it)."""
        self.entries: dict[int, bytes] = {}
        """word -> its response entry as JSON, {"item_id","channel"[,"title"]}, or b"" for
        a retired item. A word whose code the registry does not name yet has no entry (it is
        left out)."""
        self.item_words: dict[str, list[int]] = {}
        self.generation = 0
        """Counts changes of entries (and of the names they use): a prepared answer made
        under another generation is made again (`prepared`)."""

    def unknown(self, head: codec.RecordWords) -> list[int]:
        """The words of `head` with no entry yet (their items to be named: `learn`)."""
        entries = self.entries
        return [w for w in head.words if w not in entries]

    def unnamed_codes(
        self, words: list[int], head: codec.RecordWords
    ) -> tuple[list[int], list[int]]:
        """Item codes of `words` and string codes of `head` the registry copy lacks.
        Raises codec.CorruptRecord for item code 0."""
        known, strings = self.codes.item_id, self.codes.string
        items = list(dict.fromkeys(c for c, _ in map(codec.word_item, words) if c not in known))
        strs = [c for c in (head.model_code, head.variant_code) if c not in strings]
        return items, strs

    def missing_meta(self, words: list[int]) -> list[str]:
        """Named items of `words` whose mirror entry this process has not read."""
        named = self.codes.item_id
        ids = (named.get(w & codec.MAX_ITEM_CODE) for w in words)
        return list(dict.fromkeys(i for i in ids if i is not None and i not in self.meta))

    def learn(self, words: list[int]) -> None:
        """Make the entries of `words` whose items are named and whose meta is known."""
        self.generation += 1  # also after the registry named a list's strings
        for w in words:
            if w in self.entries:
                continue  # made by a read that learned the same words meanwhile
            item = codec.word_item(w)
            iid = self.codes.item_id.get(item.code)
            if iid is None or (m := self.meta.get(iid)) is None:
                continue
            title, recommendable = m
            entry = b""
            if recommendable:
                fields = {"item_id": iid, "channel": item.channel}
                if title is not None:
                    fields["title"] = title
                entry = fastjson.dumps(fields)
            self.entries[w] = entry
            self.item_words.setdefault(iid, []).append(w)

    def forget_item(self, item_id: str) -> None:
        self.generation += 1
        for w in self.item_words.pop(item_id, ()):
            self.entries.pop(w, None)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.item_words.clear()

    def answer(
        self,
        user_id: str,
        tier: str,
        head: codec.RecordWords,
        k: int,
        now: float,
        stale_after: float,
    ) -> bytes:
        """The response of a personal list as JSON: the stored entries of its words joined,
        with no dict built or serialized per item."""
        return self.finish(self.prepared(user_id, tier, head, k), head, now, stale_after)

    def prepared(self, user_id: str, tier: str, head: codec.RecordWords, k: int) -> Prepared:
        """The answer as JSON but for the two fields that change with the clock ("stale",
        "age_seconds", put last): a cached list's is made once per k, and each answer is
        `finish` of it."""
        # entries of the stored words, b"" (retired) and missing (unnamed) left out
        items = b",".join(islice(filter(None, map(self.entries.get, head.words)), k))
        string: Callable[[int], str | None] = self.codes.string.get
        model = (string(head.model_code) or "") if head.model_code else ""

        def dumps(value: Any) -> bytes:
            return fastjson.dumps(value, kept=False)

        out = b'{"user_id":%s,"k":%d,"items":[%s],"tier":%s,"mode":%s,"degraded":%s' % (
            dumps(user_id),
            k,
            items,
            dumps(tier),
            dumps(str(head.mode)),
            b"true" if head.mode == ListMode.DEGRADED else b"false",
        )
        out += b',"version":%d,"generated_at":%s,"model_version":%s' % (
            head.version,
            dumps(head.generated_at),
            dumps(model),
        )
        if head.variant_code and (variant := string(head.variant_code)):
            out += b',"variant":' + dumps(variant)
        return k, self.generation, out

    @staticmethod
    def finish(
        prepared: Prepared, head: codec.RecordWords, now: float, stale_after: float
    ) -> bytes:
        """The JSON answer from `prepared` at time `now`."""
        generated = head.generated_at
        if not generated:
            return prepared[2] + b',"stale":false,"age_seconds":null}'
        age = max(0.0, now - generated)
        stale = b',"stale":true,"age_seconds":' if age > stale_after else STALE_FALSE
        return prepared[2] + stale + fastjson.dumps(round(age, 3), kept=False) + b"}"


Prepared = tuple[int, int, bytes]
"""(k, EntryBook generation, the answer's JSON up to the clock's fields) of a cached list."""
STALE_FALSE = b',"stale":false,"age_seconds":'
