"""The in-process copy of the item-code registry forgets its codes when Redis lost them."""

from __future__ import annotations

from nearline_rec.settings import RedisSettings
from nearline_rec.storage.codes import CodeBook
from nearline_rec.storage.redis_store import RedisStore


def test_a_registry_that_is_gone_or_new_makes_the_book_forget():
    book = CodeBook()
    assert book.check_epoch(None)  # nothing learned, no registry yet
    assert book.check_epoch(b"e1")
    book.item_code["i1"], book.item_id[1] = 1, "i1"
    assert book.check_epoch("e1")  # same registry
    assert not book.check_epoch(None)  # Redis lost it
    assert book.epoch is None and not book.item_code and not book.item_id
    book.check_epoch("e2")
    book.item_code["i1"] = 7
    assert not book.check_epoch("e3") and book.item_code == {}


def test_the_store_reports_a_lost_registry_once():
    store = RedisStore(RedisSettings(url="redis://127.0.0.1:1/0"))  # never connected
    assert not store.registry_lost(None)  # nothing learned yet: nothing to lose
    store.codes.check_epoch("e1")
    assert not store.registry_lost("e1")
    assert store.registry_lost(None) and store.codes.epoch is None
    assert not store.registry_lost(None)  # forgotten: the next writes intern again
    store.codes.check_epoch("e2")
    store.codes.check_epoch(None)  # a write found it gone first: still reported, once
    assert store.registry_lost(None) and not store.registry_lost(None)
