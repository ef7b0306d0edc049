// What this client believes about the world: entities in view, interpolation of others,
// and prediction plus reconciliation of the player's own pose. Pure data, no three.js, no DOM,
// so the rules here can be checked in a page without WebGL.

// Others are drawn this far in the past, so there are usually two snapshots to blend between
// (the shard sends at most one state per tick; two 20 Hz ticks is 100 ms).
export const INTERP_DELAY_MS = 100;
// Walk a little under the shard's speed limit so arrival jitter does not get moves clamped.
export const WALK_FRACTION = 0.9;
// A predicted pose further than this from the shard's acknowledged pose is corrected.
export const RECONCILE_M = 0.5;
// Closer than this, the shard's pose and the prediction agree.
const SETTLED_M = 0.01;
// How many times an unchanged target is re-sent before the shard's pose is taken as final.
const MAX_RESENDS = 3;
// A sent move not acked within this long is taken as lost.
const PENDING_TIMEOUT_MS = 1000;
const SNAPSHOTS_KEPT = 8;

function poseGap(a, b) {
  return Math.hypot(a.x - b.x, a.y - b.y, a.z - b.z);
}

/** Clamp (x, z) into bounds [minx, minz, maxx, maxz]. */
export function clampToBounds(x, z, bounds) {
  if (!bounds) return [x, z];
  const [minx, minz, maxx, maxz] = bounds;
  return [Math.min(maxx, Math.max(minx, x)), Math.min(maxz, Math.max(minz, z))];
}

/** Shortest signed angle from a to b, in (-pi, pi]. */
export function angleDelta(a, b) {
  let d = (b - a) % (2 * Math.PI);
  if (d > Math.PI) d -= 2 * Math.PI;
  if (d <= -Math.PI) d += 2 * Math.PI;
  return d;
}

/** Pose between snapshots p and q at fraction f (yaw takes the short way round). */
export function lerpPose(p, q, f) {
  return {
    x: p.x + (q.x - p.x) * f,
    y: p.y + (q.y - p.y) * f,
    z: p.z + (q.z - p.z) * f,
    yaw: p.yaw + angleDelta(p.yaw, q.yaw) * f,
  };
}

/** One entity in view: its latest authoritative pose plus recent snapshots to interpolate. */
class Tracked {
  constructor(wire, now) {
    this.id = wire.id;
    this.kind = wire.kind;
    this.name = wire.name;
    this.props = wire.props || {};
    this.pose = { x: wire.x, y: wire.y, z: wire.z, yaw: wire.yaw || 0 };
    this.snapshots = [{ t: now, ...this.pose }];
  }

  push(pose, now) {
    this.pose = pose;
    this.snapshots.push({ t: now, ...pose });
    if (this.snapshots.length > SNAPSHOTS_KEPT) this.snapshots.shift();
  }

  /** Pose to draw at local time `now`: interpolated INTERP_DELAY_MS in the past. */
  displayPose(now) {
    const t = now - INTERP_DELAY_MS;
    const s = this.snapshots;
    if (t <= s[0].t) return s[0];
    for (let i = s.length - 1; i > 0; i--) {
      if (s[i - 1].t <= t) {
        if (t >= s[i].t) return s[i];
        return lerpPose(s[i - 1], s[i], (t - s[i - 1].t) / (s[i].t - s[i - 1].t));
      }
    }
    return s[s.length - 1];
  }
}

/**
 * The client's world model. Feed it `welcome` and `state` messages; ask it for poses to draw.
 * Listeners: onEnter(entity), onLeave(id), onSelf(pose) (after a correction).
 */
export class WorldModel {
  constructor() {
    this.entities = new Map();   // id -> Tracked (everything in view, own entity included)
    this.you = null;
    this.bounds = null;
    this.speed = 5;
    this.aoi = 50;
    this.self = null;            // predicted own pose {x, y, z, yaw}
    this.pending = [];           // moves sent but not yet acked: [{seq, x, y, z, yaw, at}]
    this.seq = 0;
    this.ack = 0;
    this.corrections = 0;        // how often the shard's pose overrode the prediction
    this._resends = 0;
    this.onEnter = () => {};
    this.onLeave = () => {};
  }

  /** Start over from a welcome: a new connection restarts acks at 0 and resends the view. */
  welcome(msg) {
    for (const id of this.entities.keys()) this.onLeave(id);
    this.entities.clear();
    this.you = msg.you;
    this.bounds = msg.bounds || null;
    this.speed = msg.speed || this.speed;
    this.aoi = msg.aoi || this.aoi;
    this.pending = [];
    this._lastSent = null;
    this._resends = 0;
    this.ack = 0;
    // seq keeps growing across connections: cheap, and never confuses a shard.
    const [x, y, z] = msg.spawn || [0, 0, 0];
    this.self = { x, y, z, yaw: 0 };
    this._selfKnown = false;
  }

  /** Apply one `state` message received at local time `now` (ms). */
  applyState(msg, now) {
    for (const wire of msg.enter || []) {
      const known = this.entities.get(wire.id);
      if (known) this.onLeave(wire.id);
      const t = new Tracked(wire, now);
      this.entities.set(wire.id, t);
      this.onEnter(t);
      if (wire.id === this.you && !this._selfKnown) {
        // The shard's view of us at join (spawn, or the restored pose on a resume).
        this.self = { ...t.pose };
        this._selfKnown = true;
      }
    }
    for (const [id, x, y, z, yaw] of msg.upd || []) {
      const t = this.entities.get(id);
      if (t) t.push({ x, y, z, yaw }, now);
    }
    for (const id of msg.leave || []) {
      if (this.entities.delete(id)) this.onLeave(id);
    }
    if (typeof msg.ack === "number") this._reconcile(msg.ack);
  }

  // The shard's pose for us is the result of applying move `ack`. If it differs from what we
  // sent as `ack` (clamped by bounds or speed), shift the prediction and the unacked moves.
  _reconcile(ack) {
    if (ack < this.ack) return;
    this.ack = ack;
    const sent = this.pending.find((m) => m.seq === ack);
    this.pending = this.pending.filter((m) => m.seq > ack);
    const mine = this.entities.get(this.you);
    if (!sent || !mine) return;
    const dx = mine.pose.x - sent.x, dy = mine.pose.y - sent.y, dz = mine.pose.z - sent.z;
    if (Math.hypot(dx, dz) <= RECONCILE_M && Math.abs(dy) <= RECONCILE_M) return;
    this.corrections += 1;
    for (const m of [this.self, ...this.pending]) {
      m.x += dx; m.y += dy; m.z += dz;
    }
  }

  /**
   * Advance the predicted own pose by `dt` seconds of input: `forward`/`strafe` in [-1, 1],
   * relative to `yaw` (radians; yaw 0 faces -z, as a three.js camera does).
   */
  walk(forward, strafe, yaw, dt) {
    if (!this.self) return;
    this.self.yaw = yaw;
    const len = Math.hypot(forward, strafe);
    if (len === 0) return;
    const step = (this.speed * WALK_FRACTION * dt) / Math.max(1, len);
    const sin = Math.sin(yaw), cos = Math.cos(yaw);
    // forward is (-sin, -cos); right is (cos, -sin).
    const nx = this.self.x + (-sin * forward + cos * strafe) * step;
    const nz = this.self.z + (-cos * forward - sin * strafe) * step;
    [this.self.x, this.self.z] = clampToBounds(nx, nz, this.bounds);
  }

  /**
   * The next `move` to send, or null. A move goes out when the predicted pose changed; also,
   * once everything sent is acked, when the shard's pose still lags the prediction (a move it
   * clamped for arriving too soon after the previous one): sending the same target again lets
   * the shard catch up. If it still will not, the shard is right and the prediction yields.
   */
  nextMove(now = performance.now()) {
    if (!this.self || !this._selfKnown) return null;
    // A move whose ack never came (the shard sends state only when something changed) is
    // forgotten after a while, so it cannot block re-sending forever.
    this.pending = this.pending.filter((m) => now - m.at < PENDING_TIMEOUT_MS);
    const last = this._lastSent;
    const p = this.self;
    const same = last && last.x === p.x && last.y === p.y && last.z === p.z && last.yaw === p.yaw;
    if (same) {
      const mine = this.entities.get(this.you);
      if (!mine || poseGap(mine.pose, p) < SETTLED_M) {
        this._resends = 0;
        return null;
      }
      if (this.pending.length) return null;   // the shard has not answered the last one yet
      if (++this._resends > MAX_RESENDS) {
        Object.assign(this.self, mine.pose);
        Object.assign(this._lastSent, mine.pose);   // nothing left to tell the shard
        this.corrections += 1;
        this._resends = 0;
        return null;
      }
    } else {
      this._resends = 0;
    }
    this.seq += 1;
    const move = { seq: this.seq, x: p.x, y: p.y, z: p.z, yaw: p.yaw, at: now };
    this.pending.push(move);
    if (this.pending.length > 64) this.pending.shift();   // bounded, whatever the shard does
    this._lastSent = move;
    return { t: "move", seq: move.seq, x: p.x, y: p.y, z: p.z, yaw: p.yaw };
  }

  /** Pose to draw for entity `id` at local time `now` (own entity: the prediction). */
  displayPose(id, now) {
    if (id === this.you && this.self) return this.self;
    const t = this.entities.get(id);
    return t ? t.displayPose(now) : null;
  }

  /**
   * Who `@raw` addresses: the nearest NPC in view whose full name starts `raw` (longest name
   * wins, so "Barnaby Quill hi" finds Barnaby Quill), else whose first name is raw's first word.
   * Returns {npc, text} with the words after the name, or null.
   */
  addressNpc(raw) {
    const lower = raw.toLowerCase();
    const me = this.self || { x: 0, z: 0 };
    let best = null;
    for (const e of this.entities.values()) {
      if (e.kind !== "npc") continue;
      const full = e.name.toLowerCase();
      let len = 0;
      if (lower.startsWith(full) && /^[\s,:]/.test(raw.slice(full.length))) len = full.length;
      else if (lower.split(/\s+/)[0].replace(/[,:]$/, "") === full.split(/\s+/)[0]) len = lower.split(/\s+/)[0].length;
      if (!len) continue;
      const d = Math.hypot(e.pose.x - me.x, e.pose.z - me.z);
      if (!best || len > best.len || (len === best.len && d < best.d)) best = { npc: e, len, d };
    }
    if (!best) return null;
    const text = raw.slice(best.len).replace(/^[\s,:]+/, "").trim();
    return text ? { npc: best.npc, text } : null;
  }
}
