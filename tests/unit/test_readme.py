"""The docs match the code: the settings table (docs/settings.md), the Redis key layout
(docs/records.md), the README's Quickstart, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from nearline_rec.settings import iter_setting_docs
from nearline_rec.storage import keys

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SETTINGS_DOC = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
RECORDS_DOC = (ROOT / "docs" / "records.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_settings_table_with_its_default():
    rows = dict(re.findall(r"^\| `(NEARLINE_[A-Z0-9_]+)` \| `([^`]*)` \|", SETTINGS_DOC, re.M))
    for env, default, _doc in iter_setting_docs():
        assert env in rows, f"{env} missing from the docs/settings.md table"
        assert rows[env] == default, (
            f"{env}: docs/settings.md says {rows[env]}, code says {default}"
        )
    assert set(rows) == {env for env, _, _ in iter_setting_docs()}


def test_redis_key_layout_table_matches_key_builders():
    table = dict(re.findall(r"^\| `P` `([^`]+)` \| (\w[\w ]*?) \|", RECORDS_DOC, re.M))
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
        keys.item_counts("P"): "hash",
        keys.counted_offsets("P"): "hash",
        keys.counts_changed("P"): "sorted set",
        keys.counts_sequence("P"): "string",
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


def test_relative_links_in_the_readme_and_docs_resolve():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_readme_stays_short_with_the_code_map_near_the_top():
    lines = README.splitlines()
    assert len(lines) <= 260, len(lines)
    headings = [line for line in lines if line.startswith("## ")]
    assert headings.index("## Code map") <= 2, headings
