// The page: name prompt -> connect -> world. Wires the connection, the world model, the 3D
// view, input, chat, panels and VR together, runs the 10 Hz move loop, and publishes a small
// read-only debug hook (window.worldsmith) so tests can check state without reading pixels.

import { Connection, defaultWsUrl } from "./net.js";
import { WorldModel } from "./world.js";
import { WorldView, QUALITY } from "./scene.js";
import { Controls } from "./controls.js";
import { ChatPanel } from "./chat.js";
import { BuildPanel, PlayersPanel } from "./panels.js";
import { MiniMap } from "./minimap.js";
import { VRMode } from "./xr.js";
import { describeClose, validName } from "./words.js";
import { publishDebugHook } from "./debug.js";

const MOVE_INTERVAL_MS = 100;   // ~10 Hz: smooth enough with interpolation, far under 30/s
const PING_INTERVAL_MS = 3000;
const MINIMAP_INTERVAL_MS = 200;
const TOKEN_KEY = "worldsmith.session";   // sessionStorage: survives a reload of this tab only

const $ = (sel) => document.querySelector(sel);

/** The session token saved for `name` in this tab, or "". */
function savedToken(name) {
  try {
    const s = JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
    return s && s.name === name ? s.token : "";
  } catch {
    return "";
  }
}

function saveToken(name, token) {
  try { sessionStorage.setItem(TOKEN_KEY, JSON.stringify({ name, token })); } catch { /* private mode */ }
}

/** Show the name prompt again with `message` (after a final close, e.g. a taken name). */
function backToLogin(message) {
  $("#game").hidden = true;
  $("#login").hidden = false;
  $("#login-message").textContent = message;
  $("#login-join").disabled = false;
}

function showBanner(text, kind = "info") {
  const b = $("#banner");
  b.textContent = text;
  b.className = kind;
  b.hidden = !text;
}

/** Join the world as `name`; builds the game once and returns its parts. */
function join(name, password) {
  const timings = { join: performance.now() };   // ms marks of the join, for the debug hook
  const params = new URLSearchParams(window.location.search);
  const conn = new Connection({
    url: params.get("ws") || defaultWsUrl(),
    name, password, token: savedToken(name),
  });
  const model = new WorldModel();
  $("#login").hidden = true;
  $("#game").hidden = false;
  // On a phone the world needs the screen more than the build panel does.
  if (window.matchMedia("(max-width: 700px)").matches) $("#build").open = false;
  const view = new WorldView($("#view"), model, QUALITY[params.get("quality")] || QUALITY.high);
  timings.view = performance.now();
  const controls = new Controls(view.canvas, $("#joystick"));
  const players = new PlayersPanel({ conn, root: $("#players") });
  const chat = new ChatPanel({
    conn, model,
    log: $("#chat-log"), form: $("#chat-form"), input: $("#chat-input"), channel: $("#chat-channel"),
    // Opening the panel asks `who` by itself; an open one is refreshed.
    onWho: () => { if ($("#players").open) players.request(); else $("#players").open = true; },
  });
  const build = new BuildPanel({ conn, model, chat, root: $("#build") });
  const minimap = new MiniMap($("#minimap"), model);
  const vr = new VRMode({ view, controls, chat, button: $("#vr-button") });
  const game = { conn, model, view, controls, chat, build, players, minimap, vr,
                 timings, status: "connecting", statusText: "", statusLog: [], rttMs: null, frames: 0, joinedOnce: false };

  conn.on("welcome", (m) => {
    timings.welcome ??= performance.now();
    model.welcome(m);
    saveToken(m.name, m.token);
    if (m.bounds) view.setBounds(m.bounds);
    minimap.setPlaces(m.places);
    $("#hud-name").textContent = m.name;
    game.selfSynced = false;
  });
  conn.on("state", (m) => {
    timings.firstState ??= performance.now();
    model.applyState(m, performance.now());
    if (!game.selfSynced && model.entities.has(model.you)) {
      // Face the way the shard says we face (a resumed session keeps its heading).
      controls.yaw = model.self.yaw;
      game.selfSynced = true;
    }
  });
  conn.on("pong", (m) => {
    game.rttMs = Math.max(0, Math.round(performance.now() - m.ct));
    $("#hud-rtt").textContent = `${game.rttMs} ms`;
  });
  conn.on("status", (s) => onStatus(game, s));

  setInterval(() => {
    if (!conn.connected) return;
    const move = model.nextMove();
    if (move) conn.send(move);
  }, MOVE_INTERVAL_MS);
  setInterval(() => conn.connected && conn.send({ t: "ping", ct: performance.now() }), PING_INTERVAL_MS);

  let last = performance.now(), lastMap = 0;
  view.start((now) => {
    // Slow devices draw few frames; a stalled tab (hidden, paused) must not teleport us.
    const dt = Math.min(0.25, (now - last) / 1000);
    last = now;
    const headYaw = vr.update();
    const input = controls.update(dt);
    model.walk(input.forward, input.strafe, headYaw ?? controls.yaw, dt);
    view.pitch = controls.pitch;
    view.bodyYaw = headYaw === null ? null : controls.yaw;
    if (now - lastMap > MINIMAP_INTERVAL_MS) {
      minimap.draw();
      build.refresh();
      lastMap = now;
    }
    game.frames += 1;
    timings.firstFrame ??= performance.now();
  });

  // Enter puts the cursor in the chat box (and gives the mouse back); Escape gives the keys
  // back to walking.
  window.addEventListener("keydown", (ev) => {
    const inChat = document.activeElement === $("#chat-input");
    if (ev.key === "Enter" && !inChat && document.activeElement.tagName !== "BUTTON") {
      if (document.pointerLockElement) document.exitPointerLock();
      $("#chat-input").focus();
      ev.preventDefault();
    } else if (ev.key === "Escape") {
      if (document.pointerLockElement) document.exitPointerLock();
      if (inChat) $("#chat-input").blur();
    }
  });

  publishDebugHook(game);
  conn.start();
  return game;
}

function onStatus(game, s) {
  game.status = s.state;
  game.statusLog.push(s.state);
  if (game.statusLog.length > 50) game.statusLog.shift();
  if (s.state === "connecting") {
    game.statusText = "Connecting…";
    showBanner(game.statusText);
  } else if (s.state === "reconnecting") {
    const why = s.code ? `${describeClose(s.code)} ` : "";
    game.statusText = `${why}Reconnecting…`;
    showBanner(game.statusText, "warn");
  } else if (s.state === "connected") {
    if (game.joinedOnce) {
      game.statusText = "Reconnected.";
      showBanner(game.statusText, "ok");
      game.chat.system("Reconnected to the world.");
      // The banner has said its piece; clear it unless something else replaced it since.
      setTimeout(() => { if (game.statusText === "Reconnected.") showBanner(""); }, 3000);
    } else {
      game.statusText = "";
      showBanner("");
      game.chat.system(`Welcome, ${game.conn.welcome.name}! Type /help to see what you can do.`);
    }
    game.joinedOnce = true;
  } else if (s.state === "closed") {
    game.statusText = describeClose(s.code);
    showBanner(game.statusText, "error");
    if (!game.joinedOnce || s.code === 4001) backToLogin(game.statusText);
  }
}

let current = null;   // the game, once joined; the page holds at most one

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("#login-name").value.trim();
  if (!validName(name)) {
    $("#login-message").textContent = "Names are 1 to 24 letters, digits, _ or -.";
    return;
  }
  try { localStorage.setItem("worldsmith.name", name); } catch { /* private mode */ }
  $("#login-join").disabled = true;
  if (current) {
    // Second try after a refused name: reuse the page, just open a new connection.
    const g = current;
    g.conn.name = name;
    g.conn.password = $("#login-password").value;
    g.conn.token = savedToken(name);
    g.joinedOnce = false;
    $("#login").hidden = true;
    $("#game").hidden = false;
    g.conn.start();
    return;
  }
  current = join(name, $("#login-password").value);
});

try {
  $("#login-name").value = localStorage.getItem("worldsmith.name") || "";
} catch { /* private mode */ }
