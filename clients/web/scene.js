// The 3D view: renderer, ground, the world's bounds, lights, a camera rig that follows the
// player (third person on a screen, first person in VR), and one mesh group per entity in view.

import * as THREE from "three";
import { makeEntityMesh, disposeGroup, surface, useCheapShading } from "./avatars.js";

// Where the camera sits behind the player on a screen (metres, in the player's frame).
const CAMERA_BACK = 4.5;
const CAMERA_UP = 2.4;

/**
 * Drawing quality. "low" is for weak devices (and software-rendered test browsers): no
 * antialiasing or shadows, Lambert shading, a quarter of the pixels, at most 15 frames a second.
 */
export const QUALITY = {
  high: { antialias: true, shadows: true, pixelRatio: 2, maxFps: 0, cheapShading: false },
  low: { antialias: false, shadows: false, pixelRatio: 0.5, maxFps: 15, cheapShading: true },
};

/** Owns the three.js scene. `model` is the WorldModel whose entities it draws. */
export class WorldView {
  constructor(container, model, quality = QUALITY.high) {
    this.model = model;
    this.quality = quality;
    if (quality.cheapShading) useCheapShading();
    this.meshes = new Map();     // entity id -> THREE.Group
    this.pitch = -0.15;          // camera look up/down on a screen (radians)
    this.bodyYaw = null;         // which way the rig faces; null: the player's yaw
    this.renderer = new THREE.WebGLRenderer({ antialias: quality.antialias });
    this.renderer.setPixelRatio(Math.min(quality.pixelRatio, window.devicePixelRatio || 1));
    this.renderer.setSize(container.clientWidth, container.clientHeight);
    this.renderer.shadowMap.enabled = quality.shadows;
    this.renderer.xr.enabled = true;
    container.appendChild(this.renderer.domElement);
    this.canvas = this.renderer.domElement;

    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x9fd0ff);
    this.scene.fog = new THREE.Fog(0x9fd0ff, 60, 220);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x557744, 1.6));
    const sun = new THREE.DirectionalLight(0xffffff, 1.8);
    sun.position.set(30, 60, 20);
    this.scene.add(sun);

    // The rig carries the camera: on a screen the camera sits behind and above; in VR the
    // headset drives the camera inside the rig, and the rig stands where the player stands.
    this.rig = new THREE.Group();
    this.camera = new THREE.PerspectiveCamera(70, container.clientWidth / container.clientHeight, 0.1, 500);
    this.rig.add(this.camera);
    this.scene.add(this.rig);
    this.ground = null;
    this.boundsLine = null;

    window.addEventListener("resize", () => this.resize(container));
    model.onEnter = (entity) => this.addEntity(entity);
    model.onLeave = (id) => this.removeEntity(id);
  }

  get inVR() {
    return this.renderer.xr.isPresenting;
  }

  resize(container) {
    this.camera.aspect = container.clientWidth / container.clientHeight;
    this.camera.updateProjectionMatrix();
    this.renderer.setSize(container.clientWidth, container.clientHeight);
  }

  /** Lay out the ground and a fence along the world's bounds [minx, minz, maxx, maxz]. */
  setBounds(bounds) {
    for (const o of [this.ground, this.boundsLine]) {
      if (o) { this.scene.remove(o); disposeGroup(o); }
    }
    const [minx, minz, maxx, maxz] = bounds;
    const w = maxx - minx, d = maxz - minz;
    const cx = (minx + maxx) / 2, cz = (minz + maxz) / 2;
    // Grass inside the bounds, a darker margin outside so the edge of the world is visible.
    const group = new THREE.Group();
    const outside = new THREE.Mesh(new THREE.PlaneGeometry(w + 200, d + 200),
      surface(0x6b7f5a, { roughness: 1 }));
    outside.rotation.x = -Math.PI / 2;
    outside.position.set(cx, -0.02, cz);
    const inside = new THREE.Mesh(new THREE.PlaneGeometry(w, d),
      surface(0x7fbf5f, { roughness: 0.95 }));
    inside.rotation.x = -Math.PI / 2;
    inside.position.set(cx, 0, cz);
    inside.receiveShadow = true;
    const grid = new THREE.GridHelper(Math.max(w, d), Math.round(Math.max(w, d) / 5), 0x5f9f4f, 0x6faf55);
    grid.position.set(cx, 0.01, cz);
    group.add(outside, inside, grid);
    this.ground = group;
    this.scene.add(group);

    const fence = new THREE.Group();
    const postGeom = new THREE.CylinderGeometry(0.08, 0.08, 1.2, 6);
    const postMat = surface(0x8b5a2b);
    const edge = [[minx, minz], [maxx, minz], [maxx, maxz], [minx, maxz], [minx, minz]];
    for (let i = 0; i < 4; i++) {
      const [ax, az] = edge[i], [bx, bz] = edge[i + 1];
      const len = Math.hypot(bx - ax, bz - az);
      const n = Math.max(1, Math.round(len / 4));
      for (let k = 0; k < n; k++) {
        const post = new THREE.Mesh(postGeom, postMat);
        post.position.set(ax + ((bx - ax) * k) / n, 0.6, az + ((bz - az) * k) / n);
        fence.add(post);
      }
    }
    const rail = new THREE.BufferGeometry().setFromPoints(edge.map(([x, z]) => new THREE.Vector3(x, 1.0, z)));
    fence.add(new THREE.Line(rail, new THREE.LineBasicMaterial({ color: 0x5a3a1a })));
    this.boundsLine = fence;
    this.scene.add(fence);
  }

  addEntity(entity) {
    this.removeEntity(entity.id);
    const group = makeEntityMesh(entity, this.model.you);
    group.userData.id = entity.id;
    const p = entity.pose;
    group.position.set(p.x, p.y, p.z);
    group.rotation.y = p.yaw;
    this.meshes.set(entity.id, group);
    this.scene.add(group);
  }

  removeEntity(id) {
    const group = this.meshes.get(id);
    if (!group) return;
    this.scene.remove(group);
    disposeGroup(group);
    this.meshes.delete(id);
  }

  /** Move every mesh to its pose for this frame and place the camera; then draw. */
  frame(now) {
    for (const [id, group] of this.meshes) {
      if (group.userData.kind === "object" && id !== this.model.you) {
        const e = this.model.entities.get(id);
        if (e) {
          group.position.set(e.pose.x, e.pose.y, e.pose.z);
          group.rotation.y = e.pose.yaw;
        }
        continue;
      }
      const p = this.model.displayPose(id, now);
      if (!p) continue;
      group.position.set(p.x, p.y, p.z);
      group.rotation.y = p.yaw;
    }
    const me = this.model.self;
    const mine = this.meshes.get(this.model.you);
    if (me) {
      this.rig.position.set(me.x, me.y, me.z);
      // In VR the head turns freely inside the rig, so the rig follows the body, not the head.
      this.rig.rotation.y = this.bodyYaw ?? me.yaw;
      if (this.inVR) {
        if (mine) mine.visible = false;   // you are inside your own head
      } else {
        if (mine) mine.visible = true;
        this.camera.position.set(0, CAMERA_UP, CAMERA_BACK);
        this.camera.rotation.set(this.pitch, 0, 0);
      }
    }
    this.renderer.render(this.scene, this.camera);
  }

  /** Call `fn(now)` before every frame; works on a screen and inside an XR session alike. */
  start(fn) {
    const minGap = this.quality.maxFps ? 1000 / this.quality.maxFps : 0;
    let last = -Infinity;
    this.renderer.setAnimationLoop(() => {
      const now = performance.now();
      // A headset sets its own pace; never skip its frames.
      if (!this.inVR && now - last < minGap) return;
      last = now;
      fn(now);
      this.frame(now);
    });
  }
}
