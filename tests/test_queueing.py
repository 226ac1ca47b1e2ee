"""The batching queue's rule (cotrain/queueing.py), which every controller and the simulator use."""

from __future__ import annotations

import pytest

from cotrain.queueing import batch_interval_ms, fill_ms, formed_batch, is_stable, worst_latency_ms


def test_a_batch_forms_in_b_minus_one_arrival_gaps() -> None:
    assert fill_ms(1, 100.0) == 0.0
    assert fill_ms(8, 100.0) == pytest.approx(70.0)
    assert fill_ms(8, 0.0) == 0.0  # nothing arrives: nothing to wait for
    assert batch_interval_ms(8, 100.0) == pytest.approx(80.0)


def test_stable_exactly_when_a_batch_runs_no_longer_than_the_next_takes_to_arrive() -> None:
    assert is_stable(80.0, 8, 100.0)
    assert not is_stable(80.1, 8, 100.0)
    assert is_stable(1e9, 8, 0.0)


def test_worst_latency_is_the_fill_plus_the_batch_or_none_when_unstable() -> None:
    assert worst_latency_ms(8, 100.0, 50.0) == pytest.approx(120.0)
    assert worst_latency_ms(8, 100.0, 90.0) is None
    assert worst_latency_ms(8, 100.0, 50.0, wait_ms=10.0) == pytest.approx(60.0)  # a short queue delay
    assert worst_latency_ms(8, 0.0, 50.0) == pytest.approx(50.0)


def test_the_queue_delay_not_the_cap_often_sets_the_batch() -> None:
    assert formed_batch(32, 10.0, 200.0) == 3  # 1 + 200/s x 10 ms
    assert formed_batch(2, 10.0, 200.0) == 2
    assert formed_batch(32, 10.0, 0.0) == 1


def test_the_controllers_use_this_rule() -> None:
    from cotrain.controllers.adaptive import operating_point, predicted_worst_ms
    from cotrain.controllers.ladder import feasible

    assert predicted_worst_ms(8, 100.0, 10.0, 5.0) == worst_latency_ms(8, 100.0, 50.0)
    assert operating_point(32, 10.0, 200.0, 1.0, 1.0) == (3, pytest.approx(10.0 + 4.0))
    profile = {("v", 8): 50.0}
    assert feasible("v", 100.0, 120.0, profile, 8, headroom=1.0)
    assert not feasible("v", 100.0, 119.0, profile, 8, headroom=1.0)
