// Meshes for what is in the world: players, NPCs (a different silhouette, so nobody mistakes
// one for the other), placed objects, and the name labels above them. Labels are sprites
// rather than DOM elements so that they also show inside a VR headset.

import * as THREE from "three";

export const OBJECT_SHAPES = ["box", "sphere", "cylinder", "cone", "pyramid", "torus"];

// Physically based shading looks best; Lambert shading is far cheaper to compile and draw,
// which weak devices (and software renderers) need. Chosen once, before anything is built.
let Material = THREE.MeshStandardMaterial;

/** Use cheap (Lambert) shading for everything built from now on. */
export function useCheapShading() {
  Material = THREE.MeshLambertMaterial;
}

/** A surface material of `colour` in the current shading; `opts` may hold PBR-only keys. */
export function surface(colour, opts = {}) {
  if (Material === THREE.MeshLambertMaterial) {
    const { roughness, metalness, ...rest } = opts;   // Lambert has neither
    return new Material({ color: colour, ...rest });
  }
  return new Material({ color: colour, ...opts });
}

/** A stable, pleasant colour for a name (same name, same colour, on every client). */
export function colourForName(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return new THREE.Color().setHSL((h % 360) / 360, 0.55, 0.55);
}

/** A text label that always faces the camera. `style` is "player" | "npc" | "object" | "self". */
export function makeLabel(text, style = "player") {
  const fonts = { player: "bold 40px sans-serif", self: "bold 40px sans-serif",
                  npc: "bold 40px serif", object: "32px sans-serif" };
  const backs = { player: "rgba(20,30,60,0.75)", self: "rgba(20,90,40,0.8)",
                  npc: "rgba(120,80,10,0.85)", object: "rgba(0,0,0,0.55)" };
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  ctx.font = fonts[style];
  const shown = style === "npc" ? `${text} ◆` : text;
  const w = Math.ceil(ctx.measureText(shown).width) + 24;
  canvas.width = w;
  canvas.height = 56;
  ctx.font = fonts[style];
  ctx.fillStyle = backs[style];
  ctx.fillRect(0, 0, w, 56);
  ctx.fillStyle = "#fff";
  ctx.textBaseline = "middle";
  ctx.fillText(shown, 12, 29);
  const tex = new THREE.CanvasTexture(canvas);
  tex.colorSpace = THREE.SRGBColorSpace;
  const sprite = new THREE.Sprite(new THREE.SpriteMaterial({ map: tex, depthTest: false, transparent: true }));
  const scale = style === "object" ? 0.005 : 0.006;
  sprite.scale.set(w * scale, 56 * scale, 1);
  sprite.renderOrder = 10;
  sprite.userData.labelText = text;
  return sprite;
}

function mesh(geometry, colour, opts = {}) {
  const m = new THREE.Mesh(geometry, surface(colour, opts));
  m.castShadow = true;
  return m;
}

/** A player: a rounded body in the name's colour, a head, and a visor showing where it faces. */
export function makePlayer(name, isSelf = false) {
  const g = new THREE.Group();
  const body = mesh(new THREE.CapsuleGeometry(0.3, 0.9, 4, 12), colourForName(name), { roughness: 0.6 });
  body.position.y = 0.75;
  const head = mesh(new THREE.SphereGeometry(0.22, 16, 12), 0xf1d2b6);
  head.position.y = 1.55;
  const visor = mesh(new THREE.BoxGeometry(0.3, 0.08, 0.08), 0x222222);
  visor.position.set(0, 1.58, -0.2);   // yaw 0 faces -z
  g.add(body, head, visor);
  const label = makeLabel(name, isSelf ? "self" : "player");
  label.position.y = 2.1;
  g.add(label);
  g.userData.kind = "player";
  return g;
}

/** An NPC: a robed cone with a hat, in warm gold, so it reads as a character, not a player. */
export function makeNpc(name) {
  const g = new THREE.Group();
  const robe = mesh(new THREE.ConeGeometry(0.45, 1.3, 16), 0xb8860b, { roughness: 0.8 });
  robe.position.y = 0.65;
  const head = mesh(new THREE.SphereGeometry(0.22, 16, 12), 0xe8c39e);
  head.position.y = 1.5;
  const hat = mesh(new THREE.ConeGeometry(0.28, 0.5, 12), 0x5b2c83);
  hat.position.y = 1.85;
  const nose = mesh(new THREE.ConeGeometry(0.05, 0.15, 8), 0xd19a6a);
  nose.rotation.x = -Math.PI / 2;
  nose.position.set(0, 1.5, -0.25);
  g.add(robe, head, hat, nose);
  const label = makeLabel(name, "npc");
  label.position.y = 2.35;
  g.add(label);
  g.userData.kind = "npc";
  return g;
}

// Unit-sized shapes centred on the object's (x, y, z): the bundled world stands a 1 m box on
// the ground at y = 0.5.
function shapeGeometry(shape) {
  switch (shape) {
    case "sphere": return new THREE.SphereGeometry(0.5, 24, 16);
    case "cylinder": return new THREE.CylinderGeometry(0.45, 0.45, 1, 24);
    case "cone": return new THREE.ConeGeometry(0.5, 1, 24);
    case "pyramid": return new THREE.ConeGeometry(0.6, 1, 4);
    case "torus": return new THREE.TorusGeometry(0.4, 0.15, 12, 32);
    default: return new THREE.BoxGeometry(1, 1, 1);
  }
}

/** A placed object: its shape and colour, centred on its (x, y, z), with its label above. */
export function makeObject(entity) {
  const props = entity.props || {};
  const g = new THREE.Group();
  const colour = /^#[0-9a-fA-F]{6}$/.test(props.color || "") ? props.color : "#9aa0a6";
  g.add(mesh(shapeGeometry(props.shape), colour, { roughness: 0.5 }));
  const text = props.label || entity.name || props.shape || "object";
  const label = makeLabel(text, "object");
  label.position.y = 0.95;
  g.add(label);
  g.userData.kind = "object";
  return g;
}

/** The mesh for any entity from the wire, by kind. */
export function makeEntityMesh(entity, you) {
  if (entity.kind === "npc") return makeNpc(entity.name);
  if (entity.kind === "object") return makeObject(entity);
  return makePlayer(entity.name, entity.id === you);
}

/** Free the GPU memory of a mesh group removed from the scene. */
export function disposeGroup(group) {
  group.traverse((o) => {
    if (o.geometry) o.geometry.dispose();
    if (o.material) {
      if (o.material.map) o.material.map.dispose();
      o.material.dispose();
    }
  });
}
