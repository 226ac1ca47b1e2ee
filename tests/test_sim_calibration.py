"""Calibration against the real Orin telemetry and CCGrid'23 Fig. 1, and its reproduction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cotrain.sim.calibration import (
    POWER_GOAL_MAPE,
    TIME_GOAL_MAPE,
    calibrate,
    calibration_table,
    mape,
)
from cotrain.sim.ccgrid23 import findings_hold, reproduce_ccgrid23
from cotrain.sim.fixtures import epochs_consistent, load_telemetry
from cotrain.sim.model import REF_MODE, steady_state
from cotrain.sim.modes import mode_space


def test_the_training_files_are_one_job_whose_active_time_is_not_its_sample_count() -> None:
    files = {f.name: f for f in load_telemetry()}
    for name in ("resnet_training_50W", "resnet_training_30W", "resnet_training_15W"):
        assert epochs_consistent(files[name], 10), name
    fifteen = files["resnet_training_15W"]
    assert fifteen.samples - fifteen.active_s > 800  # the idle stretch in the middle
    assert 4.0 < fifteen.active_s / files["resnet_training"].active_s < 4.3  # not 4.8x


def test_held_out_errors_are_computed_and_reported() -> None:
    cal = calibrate()
    assert math.isfinite(cal.time_mape) and math.isfinite(cal.power_mape)
    assert math.isfinite(cal.power_mape_mode_out)
    assert len(cal.held_out_time) == 3 + 7  # each non-reference mode, each Fig. 1 point
    assert {p.name for p in cal.held_out_power} == {
        "power depth_50W",
        "power phi_50W",
        "power resnet_50W",
        "power resnet_training_50W",
    }
    assert cal.time_mape == pytest.approx(mape(cal.held_out_time))
    table = calibration_table(cal)
    assert "held-out time MAPE" in table and "held-out power MAPE" in table
    assert f"{cal.time_mape:.2%}" in table


def test_the_goals_we_meet_are_met() -> None:
    """Time (<= 15 %, PowerTrain's) and 50W power (< 6 %) are met; leave-one-mode-out power is
    not (about 10 %), and the report says so rather than this test."""
    cal = calibrate()
    assert cal.time_mape <= TIME_GOAL_MAPE and cal.time_goal_met
    assert cal.power_mape < POWER_GOAL_MAPE and cal.power_goal_met
    assert ("NOT met" in calibration_table(cal)) == (cal.power_mape_mode_out >= POWER_GOAL_MAPE)


def test_the_fitted_model_keeps_batch_1_and_4_unstable_and_16_up_stable() -> None:
    device = calibrate().device
    for batch, stable in ((1, False), (4, False), (16, True), (64, True), (256, True)):
        assert steady_state(device, batch=batch, rate_per_s=100.0, mode=REF_MODE).stable is stable


def test_the_simulator_reproduces_ccgrid23_findings() -> None:
    rows = reproduce_ccgrid23(duration_s=120.0)
    assert all(findings_hold(rows).values()), findings_hold(rows)
    for r in rows:
        if r.published_stable:
            assert r.peak_error is not None and abs(r.peak_error) < 0.15, r
            assert r.train_error is not None and abs(r.train_error) < 0.05, r


def test_named_modes_rank_by_speed_like_the_telemetry() -> None:
    mix = calibrate().device.mix
    space = mode_space()
    factors = [mix.factor(space.resolve(m)) for m in ("MAXN", "MODE_50W", "MODE_30W", "MODE_15W")]
    assert factors[0] == pytest.approx(1.0) and factors == sorted(factors)


def test_a_missing_fixture_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTRAIN_SIM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="COTRAIN_SIM_DATA"):
        load_telemetry()
