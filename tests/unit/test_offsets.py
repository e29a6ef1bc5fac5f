"""The commit guard's bookkeeping (app.offsets): gaps, clamped commits, owed tails."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nearline_rec.commit_guard import Gap, OffsetFrontier


@dataclass(frozen=True)
class R:
    partition: int
    offset: int


def rs(*pos: tuple[int, int]) -> list[R]:
    return [R(p, o) for p, o in pos]


def test_contiguous_batch_has_no_gaps_and_moves_the_frontier():
    f = OffsetFrontier("events")
    f.reset({0: 740, 1: 729})
    batch = rs((0, 740), (1, 729), (0, 741), (1, 730))
    assert f.gaps(batch) == []
    f.advance(batch)
    assert f.positions() == {0: 742, 1: 731}


def test_first_record_of_an_assignment_skipped_is_a_gap():
    # the failure seen after a SIGKILL: committed 740, the stream started at 741
    f = OffsetFrontier("events")
    f.reset({0: 740, 1: 729, 2: 661})
    batch = rs((2, 661), (1, 729), (0, 741), (0, 742))
    assert f.gaps(batch) == [Gap(0, 740, 741)]


def test_gaps_inside_a_batch_and_on_several_partitions_in_batch_order():
    f = OffsetFrontier("events")
    f.reset({0: 736, 2: 477})
    batch = rs((0, 736), (0, 737), (2, 477), (0, 739), (2, 479), (2, 480), (0, 745))
    gaps = f.gaps(batch)
    assert gaps == [Gap(0, 738, 739), Gap(2, 478, 479), Gap(0, 740, 745)]
    assert [g.size for g in gaps] == [1, 1, 5]
    # gaps() only reads: the frontier moves when the batch is done
    assert f.positions() == {0: 736, 2: 477}


def test_redeliveries_below_the_frontier_are_not_gaps():
    f = OffsetFrontier("events")
    f.reset({0: 100})
    f.advance(rs((0, 100), (0, 101), (0, 102)))
    batch = rs((0, 100), (0, 101), (0, 102), (0, 103))  # a seek back to an older commit
    assert f.gaps(batch) == []
    f.advance(batch)
    assert f.position(0) == 104


def test_unknown_partitions_report_no_gaps_and_are_not_created_by_advance():
    f = OffsetFrontier("events")
    f.reset({0: 5})
    assert f.gaps(rs((3, 900))) == []
    f.advance(rs((3, 900), (0, 5)))
    assert f.positions() == {0: 6}


def test_commits_are_clamped_to_the_frontier_and_the_rest_is_owed():
    f = OffsetFrontier("events")
    f.reset({0: 740, 1: 729})
    f.advance(rs((1, 729), (1, 730)))
    # Faust acked 740 (skipped) and wants to commit 741 on partition 0
    assert f.clamp({0: 741, 1: 731}) == {0: 740, 1: 731}
    assert f.owed() == [Gap(0, 740, 741)]
    f.filled(Gap(0, 740, 741))
    assert f.position(0) == 741
    assert f.owed() == []
    assert f.clamp({0: 741}) == {0: 741}


def test_owed_tail_clears_when_later_records_cover_it():
    f = OffsetFrontier("events")
    f.reset({0: 10})
    f.clamp({0: 12})
    assert f.owed() == [Gap(0, 10, 12)]
    # the skipped records came in a later batch after all (a refetch)
    f.advance(rs((0, 10), (0, 11)))
    assert f.owed() == []


def test_no_commit_for_partitions_of_an_assignment_not_yet_positioned():
    f = OffsetFrontier("events")
    f.reset({0: 50, 1: 60})
    f.forget()  # a rebalance: new assignment, positions not yet learned
    assert f.clamp({0: 70, 1: 61}) == {}
    assert f.owed() == []
    f.reset({0: 55})
    assert f.clamp({0: 70, 1: 61}) == {0: 55}


def test_forget_some_partitions_only():
    f = OffsetFrontier("events")
    f.reset({0: 1, 1: 2, 2: 3})
    f.clamp({1: 9})
    f.forget([1, 2])
    assert f.positions() == {0: 1}
    assert f.owed() == []


def test_reset_moves_to_the_committed_position_either_way_and_drops_settled_debts():
    f = OffsetFrontier("events")
    f.reset({0: 100})
    f.advance(rs((0, 100), (0, 101)))
    f.clamp({0: 120})
    f.reset({0: 90})  # a seek back to the broker's committed offset
    assert f.position(0) == 90
    assert f.owed() == [Gap(0, 90, 120)]
    f.reset({0: 130})  # another owner committed further
    assert f.owed() == []


def test_filled_gap_with_no_records_still_moves_the_frontier():
    f = OffsetFrontier("events")
    f.reset({0: 7})
    f.filled(Gap(0, 7, 9))  # e.g. offsets taken by transaction markers
    assert f.position(0) == 9
    # a gap that starts beyond the frontier does not jump over unread offsets
    f.filled(Gap(0, 20, 25))
    assert f.position(0) == 9


def test_negative_position_is_refused():
    f = OffsetFrontier("events")
    with pytest.raises(ValueError, match="partition 0"):
        f.reset({0: -1})


def _guard(rebalancing: bool = False):
    from nearline_rec.commit_guard import CommitGuard
    from nearline_rec.settings import KafkaSettings

    g = CommitGuard("events", KafkaSettings(), lambda: rebalancing)
    g.frontier.reset({0: 100, 1: 200})
    return g


def test_partition_fetched_past_a_still_frontier_is_read_again_once_from_the_frontier():
    g = _guard()
    fetched = {0: 180, 1: 200}  # partition 1: nothing fetched beyond what is processed
    assert g.stalled(fetched, now=0.0, after=20) == {}
    assert g.stalled(fetched, now=19.0, after=20) == {}
    assert g.stalled(fetched, now=20.0, after=20) == {0: 100}
    # the same (frontier, position) again: not read again in a loop (e.g. a trailing marker)
    assert g.stalled(fetched, now=60.0, after=20) == {}
    assert g.stalled(fetched, now=100.0, after=20) == {}
    # fetched further and the frontier still does not move: read again
    assert g.stalled({0: 190}, now=101.0, after=20) == {}
    assert g.stalled({0: 190}, now=121.0, after=20) == {0: 100}


def test_moving_frontier_running_batch_or_rebalance_is_not_a_stall():
    g = _guard()
    g.stalled({0: 180}, now=0.0, after=20)
    g.frontier.advance(rs((0, 100), (0, 101)))  # the agent is making progress
    assert g.stalled({0: 180}, now=25.0, after=20) == {}
    assert g.stalled({0: 180}, now=44.0, after=20) == {}
    assert g.stalled({0: 180}, now=45.0, after=20) == {0: 102}

    rebalancing = _guard(rebalancing=True)
    assert rebalancing.stalled({0: 180}, now=0.0, after=20) == {}
    assert rebalancing.stalled({0: 180}, now=60.0, after=20) == {}


async def test_a_batch_holding_the_lock_is_not_a_stall():
    g = _guard()
    async with g.lock:
        assert g.stalled({0: 180}, now=0.0, after=20) == {}
        assert g.stalled({0: 180}, now=60.0, after=20) == {}
    assert g.stalled({0: 180}, now=61.0, after=20) == {}
    assert g.stalled({0: 180}, now=81.0, after=20) == {0: 100}


def test_a_new_assignment_forgets_stalls_and_rereads():
    g = _guard()
    g.stalled({0: 180}, now=0.0, after=20)
    assert g.stalled({0: 180}, now=20.0, after=20) == {0: 100}
    g.on_assigned()
    g.frontier.reset({0: 100})
    g.stalled({0: 180}, now=30.0, after=20)
    assert g.stalled({0: 180}, now=50.0, after=20) == {0: 100}
