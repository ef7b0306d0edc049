// WebXR: an "Enter VR" button shown only where the browser offers immersive-vr, thumbstick
// walking and snap turning, and a chat board floating in front of the player, since the
// page's chat panel cannot be seen inside a headset.

import * as THREE from "three";

const SNAP_TURN = Math.PI / 6;
const DEADZONE = 0.2;
const BOARD_LINES = 8;

/** True when this browser can start an immersive VR session. */
export async function vrSupported(xr = navigator.xr) {
  if (!xr || !xr.isSessionSupported) return false;
  try {
    return await xr.isSessionSupported("immersive-vr");
  } catch {
    return false;
  }
}

/** Connects the VR button, the XR session and its controllers to the view and controls. */
export class VRMode {
  constructor({ view, controls, chat, button }) {
    this.view = view;
    this.controls = controls;
    this.chat = chat;
    this.button = button;
    this.session = null;
    this._turnArmed = true;
    this._shownLines = -1;
    this.board = this._makeBoard();
    button.hidden = true;
    vrSupported().then((ok) => { button.hidden = !ok; });
    button.addEventListener("click", () => (this.session ? this.session.end() : this.enter()));
  }

  async enter() {
    const session = await navigator.xr.requestSession("immersive-vr", { optionalFeatures: ["local-floor"] });
    this.session = session;
    this.button.textContent = "Exit VR";
    session.addEventListener("end", () => {
      this.session = null;
      this.button.textContent = "Enter VR";
      this.board.visible = false;
      this.controls.extra = { forward: 0, strafe: 0 };
    });
    await this.view.renderer.xr.setSession(session);
    this.board.visible = true;
  }

  // A canvas-textured panel fixed to the rig, low and to the left, like a held notebook.
  _makeBoard() {
    const canvas = document.createElement("canvas");
    canvas.width = 1024;
    canvas.height = 512;
    const tex = new THREE.CanvasTexture(canvas);
    tex.colorSpace = THREE.SRGBColorSpace;
    const board = new THREE.Mesh(new THREE.PlaneGeometry(1.0, 0.5),
      new THREE.MeshBasicMaterial({ map: tex, transparent: true }));
    board.position.set(-0.45, 1.1, -0.8);
    board.rotation.set(-0.35, 0.4, 0);
    board.visible = false;
    board.userData.canvas = canvas;
    this.view.rig.add(board);
    return board;
  }

  _drawBoard() {
    const lines = this.chat.lines;
    const last = lines[lines.length - 1];
    const stamp = `${lines.length}:${last ? last.text.length : 0}`;
    if (stamp === this._shownLines) return;
    this._shownLines = stamp;
    const canvas = this.board.userData.canvas;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "rgba(10,15,30,0.8)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "30px sans-serif";
    ctx.fillStyle = "#fff";
    lines.slice(-BOARD_LINES).forEach((l, i) => {
      const who = l.name ? `${l.name}: ` : "";
      ctx.fillText(`${who}${l.text}`.slice(0, 70), 20, 50 + i * 58);
    });
    this.board.material.map.needsUpdate = true;
  }

  /** Per frame while presenting: read thumbsticks; returns the head's world yaw, or null. */
  update() {
    if (!this.session) return null;
    this._drawBoard();
    let forward = 0, strafe = 0, turn = 0;
    for (const src of this.session.inputSources) {
      const axes = src.gamepad ? src.gamepad.axes : [];
      // xr-standard mapping: thumbstick on axes 2 and 3.
      const ax = axes.length >= 4 ? axes[2] : 0, ay = axes.length >= 4 ? axes[3] : 0;
      if (src.handedness === "right") turn = ax;
      else { strafe = ax; forward = -ay; }
    }
    this.controls.extra = {
      forward: Math.abs(forward) > DEADZONE ? forward : 0,
      strafe: Math.abs(strafe) > DEADZONE ? strafe : 0,
    };
    // Snap turning: one step per push of the stick, which is kinder to stomachs than smooth turns.
    if (Math.abs(turn) > 0.7 && this._turnArmed) {
      this.controls.look(-Math.sign(turn) * SNAP_TURN, 0);
      this._turnArmed = false;
    } else if (Math.abs(turn) < 0.3) {
      this._turnArmed = true;
    }
    const dir = new THREE.Vector3();
    this.view.renderer.xr.getCamera().getWorldDirection(dir);
    return Math.atan2(-dir.x, -dir.z);
  }
}
