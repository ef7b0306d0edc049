"""Unit tests of clamp_move, the shard's authoritative movement rule."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worldstate import Pose, clamp_move

B = (-10.0, -20.0, 10.0, 20.0)


def test_within_limit_is_unchanged():
    """A move shorter than speed*dt inside bounds is applied exactly, yaw included."""
    assert clamp_move(Pose(0, 0, 0), Pose(1, 0.5, 1, 2.0), 1.0, B, 5.0) == Pose(1, 0.5, 1, 2.0)


def test_too_far_is_shortened_along_direction():
    """A too-long step stops at speed*dt along the same direction (3-D distance)."""
    got = clamp_move(Pose(0, 0, 0), Pose(3, 0, 4), 0.5, B, 2.0)  # 5 m asked, 1 m allowed
    assert math.isclose(got.x, 0.6) and math.isclose(got.z, 0.8) and got.y == 0
    up = clamp_move(Pose(0, 0, 0), Pose(0, 10, 0), 1.0, B, 2.0)
    assert up == Pose(0, 2.0, 0)


def test_dt_is_capped_at_one_second():
    """Waiting longer than 1 s buys no more than one second of movement."""
    got = clamp_move(Pose(0, 0, 0), Pose(9, 0, 0), 30.0, B, 2.0)
    assert got == Pose(2.0, 0, 0)


def test_zero_or_negative_dt_allows_no_translation():
    """A move with no elapsed time (or a clock going back) only turns the entity."""
    assert clamp_move(Pose(1, 0, 1), Pose(5, 0, 5, 1.0), 0.0, B, 5.0) == Pose(1, 0, 1, 1.0)
    assert clamp_move(Pose(1, 0, 1), Pose(5, 0, 5), -3.0, B, 5.0) == Pose(1, 0, 1)


def test_out_of_bounds_is_clamped_to_the_border():
    """A target outside the bounds lands on the border, never beyond it."""
    got = clamp_move(Pose(9, 0, 0), Pose(50, 0, 0), 1.0, B, 100.0)
    assert got == Pose(10.0, 0, 0)
    got = clamp_move(Pose(0, 0, 19), Pose(0, 0, 30), 1.0, B, 100.0)
    assert got == Pose(0, 0, 20.0)


def test_outside_start_is_pulled_back_inside():
    """An entity teleported outside the bounds is put back inside by its next move."""
    got = clamp_move(Pose(100, 0, 100), Pose(101, 0, 100), 0.1, B, 1.0)
    assert B[0] <= got.x <= B[2] and B[1] <= got.z <= B[3]


def test_non_finite_request_keeps_previous_values():
    """NaN or infinite requested values never reach the truth."""
    got = clamp_move(Pose(1, 2, 3, 0.5), Pose(math.nan, math.inf, -math.inf, math.nan), 1.0, B, 5.0)
    assert got == Pose(1, 2, 3, 0.5)
    assert clamp_move(Pose(1, 2, 3), Pose(2, 2, 3), math.nan, B, 5.0) == Pose(1, 2, 3)


finite = st.floats(-1e4, 1e4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(finite, finite, finite, finite, finite, finite, st.floats(-2, 5, allow_nan=False),
       st.floats(0.1, 50, allow_nan=False))
def test_result_obeys_both_rules(px, pz, py, rx, ry, rz, dt, speed):
    """From inside the bounds, any request ends inside them and within speed*min(dt,1)."""
    prev = Pose(min(max(px, -10), 10), py, min(max(pz, -20), 20))
    got = clamp_move(prev, Pose(rx, ry, rz), dt, B, speed)
    assert B[0] <= got.x <= B[2] and B[1] <= got.z <= B[3]
    step = math.dist((prev.x, prev.y, prev.z), (got.x, got.y, got.z))
    assert step <= speed * min(max(dt, 0.0), 1.0) * (1 + 1e-9) + 1e-9


def test_finite_values_whose_sum_overflows_are_kept():
    """The one-sum finiteness test only picks the slow path: huge finite values are still used."""
    got = clamp_move(Pose(0, 0, 0), Pose(1e308, 0, 1e308, 1e308), 1.0, B, 100.0)
    assert got == Pose(10.0, 0, 20.0, 1e308)
    assert clamp_move(Pose(0, 0, 0), Pose(-1e308, 0, 1e308, math.nan), 1.0, B, 100.0) == Pose(-10.0, 0, 20.0, 0.0)
