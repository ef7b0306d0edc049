// Player input on a screen: WASD/arrow keys and mouse look (pointer lock) on a desktop;
// a virtual joystick (left thumb) and drag-to-look (right thumb) on a touch screen.
// Produces walk intent (forward, strafe in [-1, 1]) and a look direction (yaw, pitch).

const TURN_RATE = 2.2;          // rad/s for the arrow keys and Q/E
const MOUSE_RATE = 0.0025;      // rad per pixel of mouse movement
const TOUCH_LOOK_RATE = 0.006;  // rad per pixel of finger drag
const PITCH_LIMIT = 1.2;
const JOYSTICK_RADIUS = 50;     // px: a full push of the virtual stick

// Keys are matched by `code` (position on the keyboard) so AZERTY players get the same layout.
const KEYS = {
  forward: ["KeyW", "ArrowUp"],
  back: ["KeyS", "ArrowDown"],
  left: ["KeyA"],
  right: ["KeyD"],
  turnLeft: ["ArrowLeft", "KeyQ"],
  turnRight: ["ArrowRight", "KeyE"],
};

function typingInto(target) {
  return target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" ||
    target.tagName === "SELECT" || target.isContentEditable);
}

/** Keyboard, mouse and touch input for the page; attach once after joining. */
export class Controls {
  constructor(canvas, joystickEl) {
    this.canvas = canvas;
    this.yaw = 0;
    this.pitch = -0.15;
    this.down = new Set();
    this.stick = { x: 0, y: 0 };     // virtual joystick, each axis in [-1, 1]
    this.extra = { forward: 0, strafe: 0 };   // e.g. an XR thumbstick
    this._touches = new Map();
    this._joystickEl = joystickEl;
    this._bind();
  }

  _bind() {
    window.addEventListener("keydown", (ev) => {
      if (typingInto(ev.target)) return;
      this.down.add(ev.code);
      if (Object.values(KEYS).some((codes) => codes.includes(ev.code))) ev.preventDefault();
    });
    window.addEventListener("keyup", (ev) => this.down.delete(ev.code));
    // Losing focus with a key held would otherwise walk forever.
    window.addEventListener("blur", () => this.down.clear());

    this.canvas.addEventListener("click", () => {
      if (document.pointerLockElement !== this.canvas && this.canvas.requestPointerLock) {
        // Some browsers return a promise that rejects when pointer lock is refused.
        try { Promise.resolve(this.canvas.requestPointerLock()).catch(() => {}); } catch { /* refused */ }
      }
    });
    // With the pointer captured, any mouse movement looks around; where the browser refuses
    // pointer lock, dragging with the left button on the world does the same.
    this.canvas.addEventListener("mousedown", (ev) => { if (ev.button === 0) this._dragging = true; });
    window.addEventListener("mouseup", () => { this._dragging = false; });
    document.addEventListener("mousemove", (ev) => {
      const locked = document.pointerLockElement === this.canvas;
      if (!locked && !(this._dragging && ev.buttons & 1)) return;
      this.look(-ev.movementX * MOUSE_RATE, -ev.movementY * MOUSE_RATE);
    });

    this.canvas.addEventListener("touchstart", (ev) => this._touchStart(ev), { passive: false });
    this.canvas.addEventListener("touchmove", (ev) => this._touchMove(ev), { passive: false });
    this.canvas.addEventListener("touchend", (ev) => this._touchEnd(ev));
    this.canvas.addEventListener("touchcancel", (ev) => this._touchEnd(ev));
  }

  /** Turn the view by (dyaw, dpitch) radians. */
  look(dyaw, dpitch) {
    this.yaw = (this.yaw + dyaw) % (2 * Math.PI);
    this.pitch = Math.max(-PITCH_LIMIT, Math.min(PITCH_LIMIT, this.pitch + dpitch));
  }

  // The left half of the screen is the joystick, the right half drags the view.
  _touchStart(ev) {
    ev.preventDefault();
    for (const t of ev.changedTouches) {
      const role = t.clientX < window.innerWidth / 2 ? "stick" : "look";
      this._touches.set(t.identifier, { role, x0: t.clientX, y0: t.clientY, x: t.clientX, y: t.clientY });
      if (role === "stick") this._showStick(t.clientX, t.clientY, 0, 0);
    }
  }

  _touchMove(ev) {
    ev.preventDefault();
    for (const t of ev.changedTouches) {
      const s = this._touches.get(t.identifier);
      if (!s) continue;
      if (s.role === "look") {
        this.look(-(t.clientX - s.x) * TOUCH_LOOK_RATE, -(t.clientY - s.y) * TOUCH_LOOK_RATE);
      } else {
        let dx = t.clientX - s.x0, dy = t.clientY - s.y0;
        const len = Math.hypot(dx, dy);
        if (len > JOYSTICK_RADIUS) { dx *= JOYSTICK_RADIUS / len; dy *= JOYSTICK_RADIUS / len; }
        this.stick = { x: dx / JOYSTICK_RADIUS, y: dy / JOYSTICK_RADIUS };
        this._showStick(s.x0, s.y0, dx, dy);
      }
      s.x = t.clientX; s.y = t.clientY;
    }
  }

  _touchEnd(ev) {
    for (const t of ev.changedTouches) {
      const s = this._touches.get(t.identifier);
      this._touches.delete(t.identifier);
      if (s && s.role === "stick") {
        this.stick = { x: 0, y: 0 };
        if (this._joystickEl) this._joystickEl.hidden = true;
      }
    }
  }

  _showStick(x, y, dx, dy) {
    const el = this._joystickEl;
    if (!el) return;
    el.hidden = false;
    el.style.left = `${x - JOYSTICK_RADIUS}px`;
    el.style.top = `${y - JOYSTICK_RADIUS}px`;
    el.firstElementChild.style.transform = `translate(${dx}px, ${dy}px)`;
  }

  _held(name) {
    return KEYS[name].some((code) => this.down.has(code)) ? 1 : 0;
  }

  /** Read input for a frame of `dt` seconds: applies key turning, returns walk intent. */
  update(dt) {
    const turn = this._held("turnLeft") - this._held("turnRight");
    if (turn) this.look(turn * TURN_RATE * dt, 0);
    const forward = this._held("forward") - this._held("back") - this.stick.y + this.extra.forward;
    const strafe = this._held("right") - this._held("left") + this.stick.x + this.extra.strafe;
    return {
      forward: Math.max(-1, Math.min(1, forward)),
      strafe: Math.max(-1, Math.min(1, strafe)),
    };
  }
}
