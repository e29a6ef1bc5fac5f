"""The README's settings table and Redis key layout match the code."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import iter_setting_docs
from app.storage import keys

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table_with_its_default():
    rows = dict(re.findall(r"^\| `(NEARLINE_[A-Z0-9_]+)` \| `([^`]*)` \|", README, re.M))
    for env, default, _doc in iter_setting_docs():
        assert env in rows, f"{env} missing from the README settings table"
        assert rows[env] == default, f"{env}: README says {rows[env]}, code says {default}"
    assert set(rows) == {env for env, _, _ in iter_setting_docs()}


def test_redis_key_layout_table_matches_key_builders():
    table = dict(re.findall(r"^\| `P` `([^`]+)` \| (\w+) \|", README, re.M))
    built = {
        keys.user_list("P", "<user_id>"): "string",
        keys.item_codes("P"): "hash",
        keys.item_ids("P"): "hash",
        keys.string_codes("P"): "hash",
        keys.strings("P"): "hash",
        keys.codes_meta("P"): "hash",
        keys.item("P", "<item_id>"): "hash",
        keys.items_index("P"): "set",
        keys.cold_start_list("P"): "string",
    }
    assert {"P" + k: v for k, v in table.items()} == built


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second():
    section = re.search(r"^## Quickstart$(.*?)^## ", README, re.S | re.M).group(1)
    cmds = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert cmds == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert cmds[1] in ci
