"""The recall-channel registry: one module per channel, its settings section, its stored code;
a new channel needs nothing but its module and its settings."""

from __future__ import annotations

import pytest

from nearline_rec.core.channels import (
    CHANNELS,
    REGISTRY,
    Channel,
    channel_codes,
    default_configs,
    register,
)
from nearline_rec.core.pipeline import PipelineConfig, Recommender
from nearline_rec.core.rank import load_model
from nearline_rec.core.recall import Candidate, ChannelConfig
from nearline_rec.core.user_state import UserState
from nearline_rec.factory import build_recommender
from nearline_rec.settings import ChannelSettings, RecallSettings, Settings
from nearline_rec.storage import codec
from tests.unit.factories import event, two_clusters


def test_every_channel_has_its_settings_section_with_the_registered_defaults():
    fields = RecallSettings.model_fields
    for name, channel in REGISTRY.items():
        assert fields[name].annotation is ChannelSettings, name
        section = getattr(RecallSettings(), name)
        assert (section.k, section.quota) == (channel.k, channel.quota)
    built = build_recommender(Settings())
    assert [cfg.name for cfg, _ in built.channels] == list(CHANNELS)


def test_codes_are_fixed_contiguous_and_what_the_record_codec_stores():
    codes = channel_codes()
    assert sorted(codes.values()) == list(range(len(codes)))
    assert codec.CHANNELS == tuple(sorted(codes, key=codes.__getitem__))
    # the codes of stored lists never change: these were written before the registry
    assert codes == {"embedding": 0, "item2item": 1, "similar_users": 2, "genre": 3,
                     "trending": 4, "newest": 5, "popular": 6, "cold_start": 7,
                     "short_term": 8, "friends": 9}  # fmt: skip


def test_a_code_or_name_taken_is_refused():
    with pytest.raises(ValueError, match="code 3 is taken"):
        register(Channel("other", 3, 5, 5, "", lambda options: lambda ctx, k: []))
    with pytest.raises(ValueError, match="registered twice"):
        register(Channel("genre", 14, 5, 5, "", lambda options: lambda ctx, k: []))


@pytest.fixture
def extra_channel():
    """A channel added the way a new module adds one (its options read from the settings)."""

    def make(options):
        wanted = options.get("extra_items", ())

        def recall(ctx, k):
            keys = [ctx.catalog.key(i) for i in wanted]
            return [Candidate(key, 9.0, "extra") for key in keys if ctx.admissible(key)][:k]

        return recall

    register(Channel("extra", 15, 5, 5, "test channel", make))
    yield
    del REGISTRY["extra"]


def test_a_registered_channel_takes_part_in_recall_merge_and_ranking(extra_channel):
    cat, _, _ = two_clusters(n_per=10)
    config = PipelineConfig(
        channels=(ChannelConfig("extra", 5, 5), *default_configs()),  # first: it keeps b7
        channel_options={"extra_items": ["b7"]},
        top_n=20,
    )
    rec = Recommender(cat, load_model(), config=config)
    state = UserState("u")
    rec.apply(state, event("e1", "a0", user_id="u", type="like"), 0)
    made = rec.recommend(state)
    assert ("b7", "extra") in {(i.item_id, i.channel) for i in made.items}
