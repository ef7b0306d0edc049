// Side panels: the build tool (place and remove your own objects) and the players list (who).

import { OBJECT_SHAPES } from "./avatars.js";

const PLACE_AHEAD_M = 2.5;   // objects appear this far in front of the player

/** True when object entity `e` belongs to the player `you` (id) named `name`. */
export function ownedBy(e, you, name) {
  const owner = (e.props || {}).owner;
  // Shards record the owner's name (names are unique case-insensitively) or id.
  return typeof owner === "string" && (owner === you || owner.toLowerCase() === name.toLowerCase());
}

/** The build tool: shape, colour and label pickers, a Place button, and your objects in view. */
export class BuildPanel {
  constructor({ conn, model, chat, root }) {
    this.conn = conn;
    this.model = model;
    this.chat = chat;
    this.shape = root.querySelector("#build-shape");
    this.colour = root.querySelector("#build-color");
    this.label = root.querySelector("#build-label");
    this.list = root.querySelector("#build-mine");
    for (const s of OBJECT_SHAPES) {
      const opt = document.createElement("option");
      opt.value = s;
      opt.textContent = s;
      this.shape.appendChild(opt);
    }
    root.querySelector("#build-place").addEventListener("click", () => this.place());
    this._listed = "";
  }

  /** Place an object of the chosen shape, colour and label in front of the player. */
  place({ shape = this.shape.value, color = this.colour.value, label = this.label.value.trim() } = {}) {
    const me = this.model.self;
    if (!me) return false;
    const msg = {
      t: "place", shape, color,
      x: me.x - Math.sin(me.yaw) * PLACE_AHEAD_M,
      y: me.y + 0.5,   // objects are centred on their y: a unit shape resting on the ground
      z: me.z - Math.cos(me.yaw) * PLACE_AHEAD_M,
      yaw: me.yaw,
    };
    if (label) msg.label = label;
    const id = this.conn.send(msg, { withId: true });
    if (id === false) {
      this.chat.system("Not connected right now; nothing was placed.", "error");
      return false;
    }
    this.chat.remember(id, { kind: "place", shape });
    return true;
  }

  /** Remove object `target` (an o: id); the shard refuses unless you own it. */
  remove(target) {
    const id = this.conn.send({ t: "remove", target }, { withId: true });
    if (id !== false) this.chat.remember(id, { kind: "remove", target });
  }

  /** Refresh the "your objects" list when what is in view changed (cheap to call each frame). */
  refresh() {
    const name = this.conn.welcome ? this.conn.welcome.name : "";
    const mine = [...this.model.entities.values()]
      .filter((e) => e.kind === "object" && ownedBy(e, this.model.you, name));
    const key = mine.map((e) => e.id).join(",");
    if (key === this._listed) return;
    this._listed = key;
    this.list.replaceChildren();
    if (!mine.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "Nothing of yours nearby.";
      this.list.appendChild(li);
    }
    for (const e of mine) {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = e.props.color || "#999";
      const text = document.createElement("span");
      text.textContent = `${e.props.label || e.props.shape || e.name}`;
      const btn = document.createElement("button");
      btn.type = "button";
      btn.textContent = "Remove";
      btn.dataset.target = e.id;
      btn.addEventListener("click", () => this.remove(e.id));
      li.append(swatch, text, btn);
      this.list.appendChild(li);
    }
  }
}

/** The players list: asks the shard `who` and shows everyone online on every shard. */
export class PlayersPanel {
  constructor({ conn, root }) {
    this.conn = conn;
    this.list = root.querySelector("#players-list");
    this.total = root.querySelector("#players-total");
    this.last = null;            // the latest who reply, for the debug hook
    this.replies = 0;            // how many who replies arrived
    root.querySelector("#players-refresh").addEventListener("click", () => this.request());
    // Opening the panel asks afresh: a list from minutes ago would mislead.
    root.addEventListener("toggle", () => { if (root.open) this.request(); });
    conn.on("who", (m) => this.show(m));
  }

  /** Ask the shard who is online. */
  request() {
    this.conn.send({ t: "who" }, { withId: true });
  }

  show(m) {
    this.last = m;
    this.replies += 1;
    this.list.replaceChildren();
    const players = [...(m.players || [])].sort((a, b) => a.name.localeCompare(b.name));
    for (const p of players) {
      const li = document.createElement("li");
      li.textContent = p.name;
      if (p.shard) {
        const s = document.createElement("small");
        s.textContent = ` (${p.shard})`;
        li.appendChild(s);
      }
      if (this.conn.welcome && p.id === this.conn.welcome.you) li.classList.add("me");
      this.list.appendChild(li);
    }
    const n = m.total ?? players.length;
    this.total.textContent = `${n} ${n === 1 ? "player" : "players"} online`;
  }
}
