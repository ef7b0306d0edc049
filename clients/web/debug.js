// window.worldsmith: a read-only window onto the client's state, for tests and for curious
// players in the browser console. Every read returns a fresh copy, so nothing a caller does
// to it can change the game; it offers no way to send anything to the shard.

function copyPose(p) {
  return p ? { x: p.x, y: p.y, z: p.z, yaw: p.yaw } : null;
}

/** Define window.worldsmith over `game` (the object main.js builds in join()). */
export function publishDebugHook(game) {
  const { conn, model, chat, players, view } = game;
  const hook = {};
  const getters = {
    /** Own entity id (p:…), or null before the first welcome. */
    you: () => model.you,
    name: () => (conn.welcome ? conn.welcome.name : conn.name),
    connected: () => conn.connected,
    /** "connecting" | "connected" | "reconnecting" | "closed" */
    status: () => game.status,
    /** Every connection state this page went through, oldest first (the last 50). */
    statusLog: () => [...game.statusLog],
    /** What the on-screen banner says about the connection ("" when nothing to say). */
    statusText: () => game.statusText,
    /** Times this page re-joined with its session token after a drop. */
    reconnects: () => conn.reconnects,
    /** Whether the most recent hello carried a session token (a resume). */
    resumedWithToken: () => Boolean(conn.lastHello && conn.lastHello.token),
    lastClose: () => (conn.lastClose ? { ...conn.lastClose } : null),
    /** The close that lost the joined session, whose reason the banner shows while retrying. */
    dropClose: () => (conn.dropClose ? { ...conn.dropClose } : null),
    /** Map id -> {id, kind, name, x, y, z, yaw, props}: the shard's latest pose of each entity in view. */
    entities: () => new Map([...model.entities].map(([id, e]) => [id, {
      id, kind: e.kind, name: e.name, ...copyPose(e.pose), props: { ...e.props },
    }])),
    /** The predicted own pose (what this client draws and sends). */
    self: () => copyPose(model.self),
    seq: () => model.seq,
    ack: () => model.ack,
    corrections: () => model.corrections,
    bounds: () => (model.bounds ? [...model.bounds] : null),
    /** Chat panel lines in order: {kind, name, text, channel, to, reply, done, reason}. */
    chatLines: () => chat.lines.map((l) => ({ ...l })),
    /** The most recent `who` reply. */
    who: () => (players.last ? JSON.parse(JSON.stringify(players.last)) : null),
    whoReplies: () => players.replies,
    /** Ids of entities with a mesh in the 3D scene (what is actually drawn). */
    drawn: () => [...view.meshes.keys()],
    rttMs: () => game.rttMs,
    /** performance.now() marks of joining: join (clicked), view (WebGL ready), welcome, firstState, firstFrame. */
    timings: () => ({ ...game.timings }),
    frames: () => game.frames,
    vrButtonShown: () => !game.vr.button.hidden,
  };
  for (const [key, get] of Object.entries(getters)) {
    Object.defineProperty(hook, key, { get, enumerable: true });
  }
  Object.defineProperty(window, "worldsmith", { value: Object.freeze(hook), configurable: true });
}
