"""Redis key layout: exact key strings, one Redis Cluster slot per user."""

from __future__ import annotations

import re

from nearline_rec.storage import keys


def test_exact_key_strings():
    assert keys.user_list("nl:", "42") == "nl:rec:{42}"
    assert keys.legacy_user_embedding("nl:", "42") == "nl:emb:{42}"
    assert keys.item_codes("nl:") == "nl:{codes}:item:code"
    assert keys.item_ids("nl:") == "nl:{codes}:item:id"
    assert keys.string_codes("nl:") == "nl:{codes}:str:code"
    assert keys.strings("nl:") == "nl:{codes}:str:id"
    assert keys.codes_meta("nl:") == "nl:{codes}:meta"
    assert keys.item("nl:", "318") == "nl:item:{318}"
    assert keys.cold_start_list("nl:") == "nl:list:cold"
    assert keys.items_index("nl:") == "nl:items"


def test_prefix_is_used_verbatim():
    assert keys.user_list("prod:rec-v2:", "u-9") == "prod:rec-v2:rec:{u-9}"
    assert keys.cold_start_list("x/") == "x/list:cold"


def test_keys_of_one_user_share_the_cluster_hash_tag():
    user_id = "user:with:colons"
    tags = {
        re.search(r"\{([^}]*)\}", k).group(1)
        for k in (keys.user_list("nl:", user_id), keys.legacy_user_embedding("nl:", user_id))
    }
    assert tags == {user_id}


def test_code_registry_keys_share_one_slot():
    registry = (keys.item_codes, keys.item_ids, keys.string_codes, keys.strings, keys.codes_meta)
    tags = {re.search(r"\{([^}]*)\}", f("nl:")).group(1) for f in registry}
    assert tags == {"codes"}


def test_distinct_users_and_kinds_never_collide():
    made = [
        f("nl:", ident)
        for f in (keys.user_list, keys.legacy_user_embedding, keys.item)
        for ident in ("1", "12", "2", "a")
    ]
    assert len(made) == len(set(made))
