"""The shard's movement rule: a requested pose is clamped by the world's bounds and speed limit."""
from __future__ import annotations

import math

from worldstate.entities import Pose

# Time since the previous applied move is counted at most this long (protocol v1).
MAX_DT_S = 1.0


def clamp_move(prev: Pose, req: Pose, dt_s: float, bounds: tuple[float, float, float, float],
               speed: float) -> Pose:
    """Return the pose actually reached when moving from `prev` towards `req` in `dt_s` seconds.

    The step may cover at most `speed * min(dt_s, 1)` metres (3-D distance); a longer step is
    shortened along the same direction. The result is then clamped into `bounds`
    (`minx, minz, maxx, maxz`). Non-finite requested values keep the previous value, and a
    negative `dt_s` counts as zero, so a malformed request can never corrupt the truth.
    """
    rx, ry, rz, yaw = req.x, req.y, req.z, req.yaw
    px, py, pz = prev.x, prev.y, prev.z
    # Plain comparisons rather than min/max calls: this runs for every move of every player.
    if not _isfinite(rx + ry + rz + yaw):  # one test when all are finite (the usual case)
        if not _isfinite(rx):
            rx = px
        if not _isfinite(ry):
            ry = py
        if not _isfinite(rz):
            rz = pz
        if not _isfinite(yaw):
            yaw = prev.yaw
    minx, minz, maxx, maxz = bounds
    # Clamp the target first so a far out-of-bounds request still moves along the border.
    rx = minx if rx < minx else maxx if rx > maxx else rx
    rz = minz if rz < minz else maxz if rz > maxz else rz
    dt = dt_s
    if not 0.0 <= dt <= MAX_DT_S:  # also NaN
        dt = (0.0 if dt < 0.0 else MAX_DT_S) if _isfinite(dt) else 0.0
    max_dist = speed * dt
    dx, dy, dz = rx - px, ry - py, rz - pz
    d2 = dx * dx + dy * dy + dz * dz
    if d2 > max_dist * max_dist:
        f = max_dist / math.sqrt(d2)
        rx, ry, rz = px + dx * f, py + dy * f, pz + dz * f
        # prev itself may lie outside (a teleport has no rules); bounds always win.
        rx = minx if rx < minx else maxx if rx > maxx else rx
        rz = minz if rz < minz else maxz if rz > maxz else rz
    return Pose(rx, ry, rz, yaw)


_isfinite = math.isfinite
