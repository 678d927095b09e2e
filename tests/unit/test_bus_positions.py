from bus.positions import PartitionPositions


def test_commit_moves_only_over_a_contiguous_acked_prefix() -> None:
    pos = PartitionPositions(committed=-1)
    for offset in range(5):
        pos.delivered(offset)
    pos.ack(2)
    pos.ack(1)
    assert pos.committed == -1  # 0 is still running
    assert pos.in_flight == 3
    pos.ack(0)
    assert pos.committed == 2
    assert pos.dirty
    pos.ack(4)
    assert pos.committed == 2
    pos.ack(3)
    assert pos.committed == 4
    assert pos.in_flight == 0


def test_gaps_in_offsets_do_not_stall_commits() -> None:
    pos = PartitionPositions(committed=9)
    for offset in (10, 12, 15):  # 11, 13, 14 were never written (a failed group commit)
        pos.delivered(offset)
    pos.ack(15)
    pos.ack(10)
    assert pos.committed == 10
    pos.ack(12)
    assert pos.committed == 15
    assert pos.last_delivered == 15
