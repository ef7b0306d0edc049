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
    rx = req.x if math.isfinite(req.x) else prev.x
    ry = req.y if math.isfinite(req.y) else prev.y
    rz = req.z if math.isfinite(req.z) else prev.z
    yaw = req.yaw if math.isfinite(req.yaw) else prev.yaw
    minx, minz, maxx, maxz = bounds
    # Clamp the target first so a far out-of-bounds request still moves along the border.
    rx = min(max(rx, minx), maxx)
    rz = min(max(rz, minz), maxz)
    dt = min(max(dt_s, 0.0), MAX_DT_S) if math.isfinite(dt_s) else 0.0
    max_dist = speed * dt
    dx, dy, dz = rx - prev.x, ry - prev.y, rz - prev.z
    dist = math.sqrt(dx * dx + dy * dy + dz * dz)
    if dist > max_dist:
        f = max_dist / dist
        rx, ry, rz = prev.x + dx * f, prev.y + dy * f, prev.z + dz * f
    # prev itself may lie outside (a teleport has no rules); bounds always win.
    rx = min(max(rx, minx), maxx)
    rz = min(max(rz, minz), maxz)
    return Pose(rx, ry, rz, yaw)
