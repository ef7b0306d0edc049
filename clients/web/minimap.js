// The mini-map: the world around you seen from above (-z at the top): the world's bounds,
// places (when the shard's welcome lists them), NPCs, players and objects in view, and you
// with your heading.

const COLOURS = { player: "#4aa3ff", npc: "#f2b233", object: "#b9b9b9", self: "#3fdc6a", place: "#ffffff" };

/** Draws onto a <canvas>; call `draw()` a few times a second. */
export class MiniMap {
  constructor(canvas, model) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.model = model;
    this.places = [];            // [{name, x, z}] from welcome.places, when the shard sends it
  }

  /** Take places from a welcome, accepting [{name, x, z}] or [{name, x, y, z}] entries. */
  setPlaces(places) {
    this.places = (Array.isArray(places) ? places : [])
      .filter((p) => p && typeof p.x === "number" && typeof p.z === "number")
      .map((p) => ({ name: String(p.name || ""), x: p.x, z: p.z }));
  }

  draw() {
    const { ctx, canvas, model } = this;
    const W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = "rgba(20, 40, 20, 0.75)";
    ctx.fillRect(0, 0, W, H);
    const b = model.bounds;
    if (!b) return;
    const [minx, minz, maxx, maxz] = b;
    // Centred on you, showing a little more than what you can see (the area of interest);
    // before the first pose, centred on the world.
    const me = model.self;
    const cx = me ? me.x : (minx + maxx) / 2, cz = me ? me.z : (minz + maxz) / 2;
    const range = Math.max(20, model.aoi * 1.25);
    const scale = Math.min(W, H) / (2 * range);
    const px = (x) => W / 2 + (x - cx) * scale;
    const pz = (z) => H / 2 + (z - cz) * scale;

    ctx.strokeStyle = "#c9a86b";
    ctx.lineWidth = 2;
    ctx.strokeRect(px(minx), pz(minz), (maxx - minx) * scale, (maxz - minz) * scale);

    // Area of interest: what you can see and hear with `say`.
    if (model.self) {
      ctx.strokeStyle = "rgba(255,255,255,0.25)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.arc(px(model.self.x), pz(model.self.z), model.aoi * scale, 0, 2 * Math.PI);
      ctx.stroke();
    }

    ctx.font = "10px sans-serif";
    for (const p of this.places) {
      ctx.fillStyle = COLOURS.place;
      ctx.fillRect(px(p.x) - 2, pz(p.z) - 2, 4, 4);
      ctx.fillText(p.name, px(p.x) + 4, pz(p.z) - 3);
    }

    for (const e of model.entities.values()) {
      if (e.id === model.you) continue;
      const x = px(e.pose.x), z = pz(e.pose.z);
      ctx.fillStyle = COLOURS[e.kind] || COLOURS.object;
      if (e.kind === "object") {
        ctx.fillRect(x - 2, z - 2, 4, 4);
      } else {
        ctx.beginPath();
        ctx.arc(x, z, e.kind === "npc" ? 4 : 3.5, 0, 2 * Math.PI);
        ctx.fill();
        if (e.kind === "npc") ctx.fillText(e.name, x + 5, z + 3);
      }
    }

    if (me) {
      // An arrow pointing where you face: yaw 0 faces -z, which is up on the map.
      const x = px(me.x), z = pz(me.z);
      const fx = -Math.sin(me.yaw), fz = -Math.cos(me.yaw);
      ctx.fillStyle = COLOURS.self;
      ctx.beginPath();
      ctx.moveTo(x + fx * 8, z + fz * 8);
      ctx.lineTo(x - fx * 4 + fz * 4, z - fz * 4 - fx * 4);
      ctx.lineTo(x - fx * 4 - fz * 4, z - fz * 4 + fx * 4);
      ctx.closePath();
      ctx.fill();
    }
  }
}
