import random

import pytest

from agent.backoff import Backoff


def test_waits_double_up_to_the_cap_each_in_the_upper_half_of_its_delay():
    backoff = Backoff(1.0, 8.0, random.Random(7))
    waits = [backoff.next_wait() for _ in range(6)]
    for wait, delay in zip(waits, [1, 2, 4, 8, 8, 8]):
        assert delay / 2 <= wait <= delay
    assert len({round(w, 6) for w in waits[3:]}) == 3, "capped waits are still jittered"


def test_reset_after_a_success_starts_again_from_the_first_delay():
    backoff = Backoff(1.0, 30.0, random.Random(1))
    for _ in range(5):
        backoff.next_wait()
    backoff.reset()
    assert 0.5 <= backoff.next_wait() <= 1.0


def test_two_workers_that_fail_together_do_not_retry_together():
    first, second = Backoff(1.0, 30.0, random.Random(1)), Backoff(1.0, 30.0, random.Random(2))
    assert [first.next_wait() for _ in range(4)] != [second.next_wait() for _ in range(4)]


@pytest.mark.parametrize("first_s, max_s", [(0.0, 1.0), (2.0, 1.0)])
def test_a_backoff_that_could_not_wait_is_refused(first_s, max_s):
    with pytest.raises(ValueError, match="0 < first_s <= max_s"):
        Backoff(first_s, max_s)
