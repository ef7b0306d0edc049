// The chat panel: what people say, private messages, NPC answers streaming in word by word
// (with a Stop button), and errors and status explained in plain words.

import { parseChatInput, describeError, describeNpcEnd, HELP_TEXT } from "./words.js";

const MAX_LINES = 200;

/** Wires the chat DOM to a Connection and a WorldModel. `lines` is shared with the debug hook. */
export class ChatPanel {
  constructor({ conn, model, log, form, input, channel, onWho }) {
    this.conn = conn;
    this.model = model;
    this.logEl = log;
    this.input = input;
    this.channelEl = channel;
    this.onWho = onWho;
    this.lines = [];             // {kind, name?, text, channel?, reply?, reason?} in arrival order
    this.replies = new Map();    // reply id -> {entry, el, textEl, stopEl}
    this.requests = new Map();   // our message id -> intent, to explain errors it causes
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit(this.input.value);
    });
    conn.on("chat", (m) => this._onChat(m));
    conn.on("npc_start", (m) => this._onNpcStart(m));
    conn.on("npc_token", (m) => this._onNpcToken(m));
    conn.on("npc_end", (m) => this._onNpcEnd(m));
    conn.on("error", (m) => this._onError(m));
  }

  /** Handle what the player typed; clears the box when it was understood. */
  submit(raw) {
    const intent = parseChatInput(raw, this.channelEl.value);
    switch (intent.kind) {
      case "none": return;
      case "help": HELP_TEXT.forEach((t) => this.system(t)); break;
      case "who": this.onWho(); break;
      case "error": this.system(intent.message, "error"); return;
      case "chat":
        if (!this._send({ t: "chat", text: intent.text, channel: intent.channel }, intent)) return;
        break;
      case "private":
        if (!this._send({ t: "chat", text: intent.text, channel: "private", to: intent.to }, intent)) return;
        break;
      case "npc": {
        const found = this.model.addressNpc(intent.raw);
        if (!found) {
          this.system(`There is nobody called ${intent.name} nearby to talk to.`, "error");
          return;
        }
        const sent = this._send({ t: "chat", text: found.text, channel: "say", to: found.npc.id },
          { ...intent, name: found.npc.name, npc: found.npc.id });
        if (!sent) return;
        break;
      }
    }
    this.input.value = "";
    // Said and done: the keys go back to walking (Enter opens the box again).
    this.input.blur();
  }

  _send(msg, intent) {
    const id = this.conn.send(msg, { withId: true });
    if (id === false) {
      this.system("Not connected right now; your message was not sent. Try again in a moment.", "error");
      return false;
    }
    this.remember(id, intent);
    return true;
  }

  /** Note what a request id was for, so an error about it can be explained. */
  remember(id, intent) {
    this.requests.set(id, intent);
    // Errors come back quickly; keep only the recent past.
    if (this.requests.size > 100) this.requests.delete(this.requests.keys().next().value);
  }

  _nameOf(id) {
    if (id === this.model.you) return "you";
    const e = this.model.entities.get(id);
    return e ? e.name : id;
  }

  _onChat(m) {
    let prefix;
    const me = this.model.you;
    if (m.channel === "private") {
      prefix = m.from === me ? `You whisper to ${this._nameOf(m.to)}:` : `${m.name} whispers:`;
    } else if (m.to && m.to.startsWith("n:")) {
      prefix = `${m.from === me ? "You" : m.name} → ${this._nameOf(m.to)}:`;
    } else if (m.channel === "shout") {
      prefix = `${m.name} shouts:`;
    } else if (m.channel === "global") {
      prefix = `[everyone] ${m.name}:`;
    } else {
      prefix = `${m.name}:`;
    }
    this._add({ kind: "chat", from: m.from, name: m.name, channel: m.channel, to: m.to, text: m.text }, prefix);
  }

  _onNpcStart(m) {
    const toMe = m.to === this.model.you;
    const entry = { kind: "npc", reply: m.reply, npc: m.npc, name: m.name, to: m.to, text: "", pieces: 0, done: false };
    const el = this._add(entry, `${m.name}${toMe ? "" : ` (to ${this._nameOf(m.to)})`}:`);
    const textEl = el.querySelector(".text");
    let stopEl = null;
    if (toMe) {
      stopEl = document.createElement("button");
      stopEl.type = "button";
      stopEl.className = "stop";
      stopEl.textContent = "Stop";
      stopEl.title = `Ask ${m.name} to stop talking`;
      stopEl.addEventListener("click", () => this.stop(m.reply));
      el.appendChild(stopEl);
    }
    el.classList.add("streaming");
    this.replies.set(m.reply, { entry, el, textEl, stopEl });
  }

  _onNpcToken(m) {
    const r = this.replies.get(m.reply);
    if (!r) return;
    r.entry.text += m.text;
    r.entry.pieces += 1;
    r.textEl.textContent = r.entry.text;
    this._scroll();
  }

  _onNpcEnd(m) {
    const r = this.replies.get(m.reply);
    if (!r) return;
    this.replies.delete(m.reply);
    // The full answer is authoritative: it repairs anything a dropped token would have lost.
    r.entry.text = m.text || r.entry.text;
    r.entry.done = true;
    r.entry.reason = m.reason;
    r.textEl.textContent = r.entry.text;
    r.el.classList.remove("streaming");
    if (r.stopEl) r.stopEl.remove();
    const why = describeNpcEnd(r.entry.name, m.reason);
    if (m.reason === "busy" || m.reason === "error") {
      // An answer that never came: tell the one who asked; bystanders need not hear of it.
      r.el.remove();
      if (r.entry.to === this.model.you) this.system(why, "error");
    } else if (why) {
      r.textEl.textContent = `${r.entry.text} ${why}`;
    }
  }

  /** Ask the shard to stop NPC answer `reply`. */
  stop(reply) {
    this.conn.send({ t: "npc_cancel", reply });
  }

  _onError(m) {
    const intent = m.re !== undefined ? this.requests.get(m.re) : undefined;
    if (intent && intent.kind === "move") return;   // clamped moves are handled by reconciling
    this.system(describeError(m, intent), "error");
  }

  /** Add a line from the game itself (kind "system" or "error"). */
  system(text, kind = "system") {
    this._add({ kind, text }, "");
  }

  _add(entry, prefix) {
    this.lines.push(entry);
    if (this.lines.length > MAX_LINES) this.lines.shift();
    const el = document.createElement("div");
    el.className = `line ${entry.kind} ${entry.channel || ""}`.trim();
    if (prefix) {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = `${prefix} `;
      el.appendChild(who);
    }
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = entry.text;   // textContent, never innerHTML: chat is untrusted
    el.appendChild(text);
    this.logEl.appendChild(el);
    while (this.logEl.childElementCount > MAX_LINES) this.logEl.firstElementChild.remove();
    this._scroll();
    return el;
  }

  _scroll() {
    this.logEl.scrollTop = this.logEl.scrollHeight;
  }
}
