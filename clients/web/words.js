// Words for people: what the chat box's commands mean, and what the shard's error codes and
// close codes mean in plain language. Pure functions, so a test can call them directly.

export const CHANNELS = ["say", "shout", "global"];

/**
 * Turn what the player typed into an intent:
 *   {kind: "chat", channel, text}            plain text, or /say, /shout, /global (/s, /g)
 *   {kind: "private", to, text}              /w Name text  (also /whisper, /msg, /tell)
 *   {kind: "npc", name, text, raw}           @Name text    (nearest NPC called Name)
 *   {kind: "who"}                            /who
 *   {kind: "help"}                           /help or /?
 *   {kind: "error", message}                 anything malformed, explained
 * `channel` is the channel picked in the panel, used for plain text.
 */
export function parseChatInput(input, channel = "say") {
  const text = input.trim();
  if (!text) return { kind: "none" };
  if (text.startsWith("@")) {
    const m = /^@(\S+)\s+([\s\S]+)$/.exec(text);
    if (!m) return { kind: "error", message: "To talk to someone, type @Name and then what you want to say." };
    // `raw` keeps the rest whole: NPC names may have spaces ("@Barnaby Quill hello").
    return { kind: "npc", name: m[1].replace(/[,:]$/, ""), text: m[2].trim(), raw: text.slice(1) };
  }
  if (!text.startsWith("/")) return { kind: "chat", channel, text };
  const m = /^\/(\S+)\s*([\s\S]*)$/.exec(text);
  const cmd = m[1].toLowerCase();
  const rest = m[2].trim();
  switch (cmd) {
    case "s": case "say": case "shout": case "g": case "global": {
      const ch = { s: "say", say: "say", shout: "shout", g: "global", global: "global" }[cmd];
      if (!rest) return { kind: "error", message: `Type something after /${cmd}.` };
      return { kind: "chat", channel: ch, text: rest };
    }
    case "w": case "whisper": case "msg": case "tell": {
      const pm = /^(\S+)\s+([\s\S]+)$/.exec(rest);
      if (!pm) return { kind: "error", message: `To whisper, type /${cmd} Name and then your message.` };
      return { kind: "private", to: pm[1], text: pm[2].trim() };
    }
    case "who": return { kind: "who" };
    case "help": case "?": return { kind: "help" };
    default:
      return { kind: "error", message: `There is no /${cmd} command. Type /help to see what you can do.` };
  }
}

export const HELP_TEXT = [
  "Type to talk to people near you. Pick say, shout or global below the box.",
  "/shout text — heard further away.  /g text — heard by everyone in the world.",
  "/w Name text — whisper to one player.  @Name text — talk to the nearest character called Name.",
  "/who — who is online.  Walk with WASD or the arrow keys; click the world to look around with the mouse.",
];

/**
 * A shard `error` in plain words. `request` is what we sent that caused it (may be undefined),
 * so the message can name the player or character involved.
 */
export function describeError(err, request) {
  const about = request || {};
  switch (err.code) {
    case "rate_limited":
      if (about.kind === "npc") return "Someone is still answering you. Wait for them to finish, or press Stop.";
      if (about.kind === "move") return "You are moving faster than the world allows.";
      return "Slow down a little: you are sending messages too fast.";
    case "not_found":
      if (about.kind === "private") return `Nobody called ${about.to} is online right now.`;
      if (about.kind === "remove") return "That object is already gone.";
      return "That could not be found.";
    case "too_far":
      return `You are too far from ${about.name || "them"} to talk. Walk closer and try again.`;
    case "forbidden":
      if (about.kind === "remove") return "You can only remove objects that you placed.";
      return "You are not allowed to do that.";
    case "invalid":
      if (err.field === "color") return "That colour is not valid. Use a colour like #ff8800.";
      if (err.field === "text") return "That message is too long or empty.";
      if (err.field === "shape") return "That shape is not available here.";
      if (err.field === "label") return "That label is too long or not allowed.";
      return `That did not work (${err.field ? `problem with ${err.field}` : err.msg || "invalid"}).`;
    case "busy":
      return "The world is busy right now. Try again in a moment.";
    case "auth":
      return "That name belongs to someone else, or the password is wrong.";
    case "bad_json":
    case "unknown_type":
      return "The game sent something the world did not understand. Reloading the page may help.";
    default:
      return err.msg ? `Something went wrong: ${err.msg}` : "Something went wrong.";
  }
}

/** Why an NPC answer ended, in plain words, or "" when it simply finished. */
export function describeNpcEnd(name, reason) {
  switch (reason) {
    case "stop": return "";
    case "length": return "(cut short)";
    case "cancelled": return "(stopped)";
    case "busy": return `${name} is busy talking to others right now. Try again in a moment.`;
    case "error": return `${name} lost their train of thought. Try asking again.`;
    default: return "";
  }
}

/** A close code in plain words: shown while reconnecting, or on the name prompt when final. */
export function describeClose(code) {
  switch (code) {
    case 1001: return "The world server is restarting.";
    case 1006: return "The connection was lost.";
    case 1009: return "A message was too large for the world server.";
    case 4000: return "The world server did not hear from us in time.";
    case 4001: return "That name is in use, or the password is wrong.";
    case 4002: return "You joined from another window or device, so this one was disconnected.";
    case 4008: return "Disconnected for sending too much, too fast.";
    case 4013: return "The world is full right now.";
    default: return "The connection was lost.";
  }
}

/** True when `name` is a valid player name under the shard's default rule. */
export function validName(name) {
  return /^[A-Za-z0-9_-]{1,24}$/.test(name);
}
