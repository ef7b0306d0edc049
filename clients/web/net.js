// The connection to the shard: one WebSocket speaking protocol v1 (subprotocol world.v1).
// Owns hello/resume, request ids, and reconnecting with the session token after a drop.
// Knows nothing about three.js or the DOM: it hands parsed messages to its listeners.

export const SUBPROTOCOL = "world.v1";

// Close codes after which trying again would only repeat the failure (or fight another tab).
const FINAL_CLOSES = new Set([4001, 4002, 4008]);

/** Default ws:// or wss:// URL of the shard that served this page. */
export function defaultWsUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/ws`;
}

/** Delay before reconnect attempt `n` (0-based): doubles from 0.5 s up to 10 s, with jitter. */
export function backoffMs(n, random = Math.random) {
  const base = Math.min(10000, 500 * 2 ** n);
  // Jitter spreads a crowd of clients that lost the same shard at the same moment.
  return Math.round(base * (0.75 + 0.5 * random()));
}

/**
 * A self-healing session with one shard.
 *
 * Events (via `on(type, fn)`): every shard message type ("welcome", "state", "chat", ...),
 * plus "status" ({state, attempt, delayMs, code, reason}) whenever the connection state
 * changes: "connecting" | "connected" | "reconnecting" | "closed".
 */
export class Connection {
  constructor({ url = defaultWsUrl(), name, password = "", token = "", WebSocketImpl = WebSocket } = {}) {
    this.url = url;
    this.name = name;
    this.password = password;
    this.token = token;
    this.WebSocketImpl = WebSocketImpl;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.welcome = null;
    this.reconnects = 0;         // successful re-joins after a drop
    this.lastHello = null;       // what the most recent hello carried (for the debug hook)
    this.lastClose = null;       // {code, reason} of the most recent close
    this.dropClose = null;       // {code, reason} of the close that lost the joined session
    this._listeners = new Map();
    this._nextId = 1;
    this._timer = null;
    this._stopped = false;
    this._dropped = false;       // true between losing a joined session and re-joining it
  }

  /** Register `fn` for messages or events of `type`; returns a function that unregisters it. */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type).delete(fn);
  }

  _emit(type, payload) {
    for (const fn of this._listeners.get(type) || []) {
      try { fn(payload); } catch (err) { console.error(`listener for ${type} failed`, err); }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("status", { state, attempt: this.attempt, ...extra });
  }

  /** Open the first connection. Call once; later drops reconnect by themselves. */
  start() {
    this._stopped = false;
    this._open();
  }

  /** Close for good (no reconnect), e.g. when the player leaves. */
  stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    if (this.ws) this.ws.close(1000, "bye");
    this._setState("closed", { code: 1000, reason: "left" });
  }

  get connected() {
    return this.state === "connected";
  }

  /**
   * Send one message; returns its `id` when `withId` (so a later error's `re` can be matched),
   * or null. Returns false when the socket is not open: the caller decides whether to retry.
   */
  send(msg, { withId = false } = {}) {
    if (!this.ws || this.ws.readyState !== 1 || !this.welcome) return false;
    let id = null;
    if (withId) {
      id = `c${this._nextId++}`;
      msg = { ...msg, id };
    }
    this.ws.send(JSON.stringify(msg));
    return id;
  }

  _open() {
    clearTimeout(this._timer);
    this.welcome = null;
    this._setState(this._dropped ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url, SUBPROTOCOL);
    } catch (err) {
      this._scheduleReconnect(0, String(err));
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      const hello = { t: "hello", v: 1, name: this.name };
      if (this.password) hello.password = this.password;
      if (this.token) hello.token = this.token;
      this.lastHello = { ...hello, password: hello.password ? "***" : undefined };
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev);
    // onerror is always followed by onclose, which does the work.
    ws.onerror = () => {};
  }

  _onMessage(ws, ev) {
    if (ws !== this.ws) return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn("shard sent a frame that is not JSON", ev.data);
      return;
    }
    if (!msg || typeof msg.t !== "string") return;
    if (msg.t === "welcome") {
      const resumed = this._dropped && Boolean(this.lastHello && this.lastHello.token);
      this.welcome = msg;
      this.token = msg.token;
      if (resumed) this.reconnects += 1;
      this._dropped = false;
      this.attempt = 0;
      this._emit("welcome", msg);
      this._setState("connected", { resumed });
      return;
    }
    this._emit(msg.t, msg);
  }

  _onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.welcome = null;
    this.lastClose = { code: ev.code, reason: ev.reason };
    this._emit("close", this.lastClose);
    if (this._stopped) return;
    if (ev.code === 4001 && this.token) {
      // The shard no longer knows this token (its database was reset, say): join by name instead.
      this.token = "";
      this._scheduleReconnect(ev.code, ev.reason);
      return;
    }
    if (FINAL_CLOSES.has(ev.code)) {
      this._setState("closed", this.lastClose);
      return;
    }
    // Failed retries also close (1006, refused); the reason worth showing is the first one.
    if (!this._dropped) this.dropClose = this.lastClose;
    this._dropped = true;
    this._scheduleReconnect(this.dropClose.code, this.dropClose.reason);
  }

  _scheduleReconnect(code, reason) {
    const delayMs = backoffMs(this.attempt);
    this.attempt += 1;
    this._setState("reconnecting", { code, reason, delayMs });
    this._timer = setTimeout(() => this._open(), delayMs);
  }
}
