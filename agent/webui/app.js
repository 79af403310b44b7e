// The calibration page: zones and ground points drawn on a <canvas> over the camera's frame, in
// pixels of that frame; rule forms built from the server's description of each rule's Params.
// No framework, no build step: this file is served as it is.
"use strict";

const HIT_PX = 9;          // how near (in screen pixels) a click must be to grab a corner or point
const PREVIEW_EVERY_MS = 1000;

const $ = (id) => document.getElementById(id);
const state = {
  camera: null,        // the server's camera document
  rules: {},           // rule type -> {doc, fields}
  zones: [],           // [{id, from, polygon: [[x, y]...], rule: {type, ...}}]
  selected: -1,        // index into zones
  drawing: null,       // the polygon being drawn, or null
  drag: null,          // {kind: "corner"|"point", zone, index}
  points: [],          // ground points [{pixel: [x, y], ground: [a, b] | [null, null], error}]
  mode: "zones",
  previewTimer: null,
};

async function api(path, body) {
  const init = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const doc = await response.json();
  if (!response.ok) throw Object.assign(new Error(doc.error || response.statusText), {key: doc.key || ""});
  return doc;
}

// ------------------------------------------------------------------------------ loading
async function start() {
  state.rules = await api("/api/rules");
  for (const name of Object.keys(state.rules)) $("rule-type").add(new Option(name, name));
  const {cameras} = await api("/api/cameras");
  for (const c of cameras) $("camera").add(new Option(`${c.name} (${c.id})`, c.id));
  bindControls();
  await loadCamera();
}

async function loadCamera() {
  stopPreview();
  const id = $("camera").value;
  const doc = await api(`/api/cameras/${encodeURIComponent(id)}`);
  state.camera = doc;
  state.zones = Object.entries(doc.zones).map(([zid, z]) => ({id: zid, from: zid, polygon: z.polygon, rule: {...z.rule}}));
  state.points = (doc.calibration && doc.calibration.points || []).map(p => ({pixel: p.pixel, ground: p.ground, error: null}));
  if (doc.calibration) {
    $("datum").value = doc.calibration.datum || "WGS-84";
    if (doc.calibration.origin) [$("origin-lat").value, $("origin-lon").value] = doc.calibration.origin;
  }
  $("grid-code").value = doc.grid_code;
  const [w, h] = doc.frame_size;
  const canvas = $("overlay");
  canvas.width = w;
  canvas.height = h;
  $("frame-info").textContent = `${w} × ${h} px`;
  await showFrame();
  select(state.zones.length ? 0 : -1);
  renderPoints();
  datumChanged();
}

function showFrame() {
  return new Promise((resolve) => {
    const img = $("frame");
    img.onload = resolve;
    img.onerror = resolve;
    img.src = `/api/cameras/${encodeURIComponent(state.camera.id)}/frame.jpg?t=${Date.now()}`;
  });
}

// ------------------------------------------------------------------------------ drawing
function draw() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const scale = canvas.width / canvas.clientWidth;  // frame pixels per screen pixel
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2 * scale;
  ctx.font = `${13 * scale}px system-ui, sans-serif`;
  if (!previewOn()) {
    state.zones.forEach((z, i) => polygon(ctx, z.polygon, i === state.selected ? "#ffd700" : "#00bcd4", true, scale, z.id));
  } else if (state.mode === "zones" && state.zones[state.selected]) {
    // The preview draws the saved zones and their states itself: only the corners being edited.
    polygon(ctx, state.zones[state.selected].polygon, "#ffd700", true, scale, "");
  }
  if (state.drawing) polygon(ctx, state.drawing, "#ff9800", false, scale, "");
  if (state.mode === "ground") {
    state.points.forEach((p, i) => {
      ctx.fillStyle = "#e91e63";
      ctx.beginPath();
      ctx.arc(p.pixel[0], p.pixel[1], 5 * scale, 0, 2 * Math.PI);
      ctx.fill();
      label(ctx, String(i + 1), p.pixel[0] + 7 * scale, p.pixel[1] - 7 * scale, "#e91e63");
    });
  }
}

function polygon(ctx, points, colour, closed, scale, name) {
  if (!points.length) return;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour + "33";
  ctx.beginPath();
  points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (closed) { ctx.closePath(); ctx.fill(); }
  ctx.stroke();
  ctx.fillStyle = colour;
  for (const [x, y] of points) ctx.fillRect(x - 4 * scale, y - 4 * scale, 8 * scale, 8 * scale);
  if (name) label(ctx, name, points[0][0] + 6 * scale, points[0][1] + 16 * scale, colour);
}

function label(ctx, text, x, y, colour) {
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#000";
  ctx.strokeText(text, x, y);
  ctx.fillStyle = colour;
  ctx.fillText(text, x, y);
  ctx.lineWidth = 2;
}

// ------------------------------------------------------------------------------ mouse
function framePoint(event) {
  const canvas = $("overlay");
  const box = canvas.getBoundingClientRect();
  const sx = canvas.width / box.width, sy = canvas.height / box.height;
  return [Math.round((event.clientX - box.left) * sx * 10) / 10, Math.round((event.clientY - box.top) * sy * 10) / 10];
}

function near(a, b) {
  const canvas = $("overlay");
  const reach = HIT_PX * canvas.width / canvas.getBoundingClientRect().width;
  return Math.hypot(a[0] - b[0], a[1] - b[1]) <= reach;
}

function hitCorner(p) {
  // The selected zone's corners first: they are the ones being edited.
  const order = state.zones.map((_, i) => i).sort((a, b) => (b === state.selected) - (a === state.selected));
  for (const zi of order) {
    const index = state.zones[zi].polygon.findIndex(q => near(p, q));
    if (index >= 0) return {kind: "corner", zone: zi, index};
  }
  return null;
}

function inside(p, poly) {
  let odd = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > p[1]) !== (yj > p[1]) && p[0] < (xj - xi) * (p[1] - yi) / (yj - yi) + xi) odd = !odd;
  }
  return odd;
}

function onMouseDown(event) {
  if (event.button !== 0) return;
  const p = framePoint(event);
  if (state.mode === "ground") {
    const index = state.points.findIndex(q => near(p, q.pixel));
    if (index >= 0) state.drag = {kind: "point", index};
    else { state.points.push({pixel: p, ground: [null, null], error: null}); renderPoints(); }
    return draw();
  }
  if (state.drawing) {
    if (state.drawing.length >= 3 && near(p, state.drawing[0])) finishZone();
    else state.drawing.push(p);
    return draw();
  }
  const corner = hitCorner(p);
  if (corner) { select(corner.zone); state.drag = corner; return; }
  const zi = state.zones.findIndex(z => inside(p, z.polygon));
  if (zi >= 0) select(zi);
}

function onMouseMove(event) {
  if (!state.drag) return;
  const p = framePoint(event);
  if (state.drag.kind === "point") { state.points[state.drag.index].pixel = p; renderPoints(); }
  else state.zones[state.drag.zone].polygon[state.drag.index] = p;
  draw();
}

function onContextMenu(event) {
  event.preventDefault();
  const p = framePoint(event);
  if (state.mode === "ground") {
    const index = state.points.findIndex(q => near(p, q.pixel));
    if (index >= 0) { state.points.splice(index, 1); renderPoints(); draw(); }
    return;
  }
  const corner = hitCorner(p);
  if (corner && state.zones[corner.zone].polygon.length > 3) {
    state.zones[corner.zone].polygon.splice(corner.index, 1);
    draw();
  }
}

// ------------------------------------------------------------------------------ zones
function newZone() {
  state.drawing = [];
  $("finish-zone").disabled = false;
  status("save-status", "Click the zone's corners on the picture.", "");
}

function finishZone() {
  if (!state.drawing || state.drawing.length < 3) return status("save-status", "A zone needs at least 3 corners.", "error");
  let n = state.zones.length + 1;
  while (state.zones.some(z => z.id === `zone${n}`)) n++;
  const type = Object.keys(state.rules)[0];
  state.zones.push({id: `zone${n}`, from: null, polygon: state.drawing, rule: {type}});
  state.drawing = null;
  $("finish-zone").disabled = true;
  select(state.zones.length - 1);
  status("save-status", "", "");
}

function deleteZone() {
  if (state.selected < 0) return;
  state.zones.splice(state.selected, 1);
  select(Math.min(state.selected, state.zones.length - 1));
}

function select(index) {
  state.selected = index;
  const list = $("zone-list");
  list.replaceChildren(...state.zones.map((z, i) => new Option(`${z.id}: ${z.rule.type}`, String(i))));
  list.value = String(index);
  const zone = state.zones[index];
  $("zone-editor").disabled = !zone;
  if (zone) {
    $("zone-id").value = zone.id;
    $("rule-type").value = zone.rule.type;
  }
  renderRuleForm();
  draw();
}

// The form of the selected zone's rule, from the rule's Params description: an empty input
// leaves the key out of the file, so the default holds (and `check` says so).
function renderRuleForm() {
  const form = $("rule-form");
  form.replaceChildren();
  const zone = state.zones[state.selected];
  if (!zone) { $("rule-doc").textContent = ""; return; }
  const rule = state.rules[zone.rule.type];
  $("rule-doc").textContent = rule ? rule.doc : `unknown rule ${zone.rule.type}`;
  for (const f of rule ? rule.fields : []) form.append(fieldInput(f, zone.rule[f.name]));
}

function fieldInput(f, value) {
  const wrap = document.createElement("label");
  wrap.className = "field";
  wrap.dataset.field = f.name;
  const title = document.createElement("span");
  title.textContent = f.name + (f.required ? " *" : "");
  const unit = document.createElement("span");
  unit.className = "unit";
  unit.textContent = f.unit ? ` (${f.unit})` : "";
  let input;
  if (f.type === "boolean" || f.type.startsWith("choice:")) {
    input = document.createElement("select");
    const choices = f.type === "boolean" ? ["true", "false"] : f.type.slice(7).split("|");
    input.add(new Option(f.default === null ? "(not set)" : `default: ${f.default}`, ""));
    for (const c of choices) input.add(new Option(c, c));
    input.value = value === undefined ? "" : String(value);
  } else {
    input = document.createElement("input");
    if (f.type === "number" || f.type === "integer") {
      input.type = "number";
      input.step = f.type === "integer" ? "1" : "any";
      if (f.ge !== null) input.min = f.ge;
      if (f.le !== null) input.max = f.le;
    }
    const shown = (v) => Array.isArray(v) ? v.join(", ") : String(v);
    input.placeholder = f.required ? "required" : f.default === null ? "not set" : `default: ${shown(f.default)}`;
    input.value = value === undefined ? "" : shown(value);
  }
  input.name = f.name;
  input.dataset.type = f.type;
  input.addEventListener("change", () => collectRule());
  const help = document.createElement("span");
  help.className = "help";
  const bounds = [["ge", "≥"], ["gt", ">"], ["le", "≤"]].filter(([k]) => f[k] !== null).map(([k, op]) => `${op} ${f[k]}`);
  help.textContent = f.help + (bounds.length ? ` [${bounds.join(", ")}]` : "");
  wrap.append(title, unit, input, help);
  return wrap;
}

function collectRule() {
  const zone = state.zones[state.selected];
  if (!zone) return;
  zone.id = $("zone-id").value.trim() || zone.id;
  const rule = {type: zone.rule.type};
  for (const input of $("rule-form").querySelectorAll("input, select")) {
    const text = input.value.trim();
    if (text === "") continue;
    const type = input.dataset.type;
    if (type === "number" || type === "integer") rule[input.name] = Number.isFinite(Number(text)) ? Number(text) : text;
    else if (type === "boolean") rule[input.name] = text === "true";
    else if (type.startsWith("list:")) {
      const items = text.split(",").map(s => s.trim()).filter(Boolean);
      const numeric = type === "list:number" || type === "list:integer";
      rule[input.name] = numeric ? items.map(s => (Number.isFinite(Number(s)) ? Number(s) : s)) : items;
    }
    else rule[input.name] = text;
  }
  zone.rule = rule;
}

async function save() {
  collectRule();
  for (const el of document.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
  const zones = {};
  for (const z of state.zones) zones[z.id] = {polygon: z.polygon, rule: z.rule, ...(z.from ? {from: z.from} : {})};
  try {
    const done = await api(`/api/cameras/${encodeURIComponent(state.camera.id)}/zones`,
                           {zones, grid_code: $("grid-code").value});
    for (const z of state.zones) z.from = z.id;
    status("save-status", `Saved ${done.saved} (the old file is ${done.backup}).`, "ok");
  } catch (err) {
    status("save-status", err.message, "error");
    showInvalid(err.key, err.message);
  }
}

// "zones.<id>.rule.<key>...": select that zone, mark the key's input and say why beside it.
function showInvalid(key, message) {
  const match = /^zones\.([^.]+)\.rule\.([^.[]+)/.exec(key || "");
  if (!match) return;
  const index = state.zones.findIndex(z => z.id === match[1]);
  if (index < 0) return;
  select(index);
  const field = $("rule-form").querySelector(`[data-field="${CSS.escape(match[2])}"]`);
  if (!field) return;
  field.classList.add("invalid");
  const why = document.createElement("span");
  why.className = "why";
  why.textContent = message.slice(message.indexOf(key));  // the key and the reason, not the path
  field.append(why);
  field.scrollIntoView({block: "center"});
}

// ------------------------------------------------------------------------------ ground points
function datumChanged() {
  const local = $("datum").value === "local-m";
  $("origin").hidden = !local;
  document.querySelector("#points th.a").textContent = local ? "x (m)" : "lat";
  document.querySelector("#points th.b").textContent = local ? "y (m)" : "lon";
}

function renderPoints() {
  const body = document.querySelector("#points tbody");
  body.replaceChildren(...state.points.map((p, i) => {
    const row = document.createElement("tr");
    const cell = (content) => { const td = document.createElement("td"); td.append(content); return td; };
    const coord = (k) => {
      const input = document.createElement("input");
      input.type = "number";
      input.step = "any";
      input.className = k ? "ground-b" : "ground-a";
      input.value = p.ground[k] === null || p.ground[k] === undefined ? "" : p.ground[k];
      input.addEventListener("change", () => { p.ground[k] = input.value === "" ? null : Number(input.value); });
      return input;
    };
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove this point";
    remove.addEventListener("click", () => { state.points.splice(i, 1); renderPoints(); draw(); });
    const error = document.createElement("span");
    error.className = "error-px";
    error.textContent = p.error === null ? "" : `${p.error.toFixed(2)} px`;
    row.append(cell(String(i + 1)), cell(`${p.pixel[0].toFixed(0)}, ${p.pixel[1].toFixed(0)}`),
               cell(coord(0)), cell(coord(1)), cell(error), cell(remove));
    return row;
  }));
}

async function fit() {
  const missing = state.points.findIndex(p => p.ground.some(v => v === null || !Number.isFinite(v)));
  if (missing >= 0) return status("fit-status", `Point ${missing + 1}: type both coordinates.`, "error");
  const local = $("datum").value === "local-m";
  const body = {datum: $("datum").value, points: state.points.map(p => ({pixel: p.pixel, ground: p.ground})),
                origin: local ? [Number($("origin-lat").value), Number($("origin-lon").value)] : null};
  try {
    const done = await api(`/api/cameras/${encodeURIComponent(state.camera.id)}/calibration`, body);
    done.errors_px.forEach((e, i) => { state.points[i].error = e; });
    renderPoints();
    status("fit-status", `rms ${done.rms_px.toFixed(2)} px; version ${done.version} saved to ${done.file}; ` +
                         `reference frame ${done.reference}.`, "ok");
  } catch (err) {
    status("fit-status", err.message, "error");
  }
}

// ------------------------------------------------------------------------------ preview
function previewOn() { return $("preview-toggle").checked; }

function startPreview() {
  stopPreview();
  $("preview-toggle").checked = true;
  $("preview-states").hidden = false;
  const tick = async () => {
    try {
      const doc = await api(`/api/cameras/${encodeURIComponent(state.camera.id)}/preview`);
      if (doc.ready) {
        $("frame").src = doc.image;
        $("preview-states").replaceChildren(...Object.entries(doc.states).map(([zone, text]) => {
          const li = document.createElement("li");
          li.textContent = `${zone}: ${text}`;
          return li;
        }));
      } else if (!$("preview-states").children.length) {
        $("preview-states").replaceChildren(Object.assign(document.createElement("li"), {textContent: "starting the detector…"}));
      }
    } catch (err) {
      $("preview-states").replaceChildren(Object.assign(document.createElement("li"), {textContent: err.message}));
    }
    draw();
  };
  tick();
  state.previewTimer = setInterval(tick, PREVIEW_EVERY_MS);
}

function stopPreview() {
  if (state.previewTimer) clearInterval(state.previewTimer);
  state.previewTimer = null;
  $("preview-toggle").checked = false;
  $("preview-states").hidden = true;
  $("preview-states").replaceChildren();
  if (state.camera) showFrame().then(draw);
}

// ------------------------------------------------------------------------------ wiring
function status(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = kind;
}

function bindControls() {
  const canvas = $("overlay");
  canvas.addEventListener("mousedown", onMouseDown);
  window.addEventListener("mousemove", onMouseMove);
  window.addEventListener("mouseup", () => { state.drag = null; });
  canvas.addEventListener("contextmenu", onContextMenu);
  window.addEventListener("resize", draw);
  document.addEventListener("keydown", (e) => { if (e.key === "Enter" && state.drawing) finishZone(); });
  $("camera").addEventListener("change", loadCamera);
  $("refresh-frame").addEventListener("click", async () => {
    await api(`/api/cameras/${encodeURIComponent(state.camera.id)}/frame`, {});
    await showFrame();
    draw();
  });
  $("preview-toggle").addEventListener("change", () => (previewOn() ? startPreview() : stopPreview()));
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      state.mode = radio.value;
      $("zones-panel").hidden = state.mode !== "zones";
      $("ground-panel").hidden = state.mode !== "ground";
      draw();
    });
  }
  $("new-zone").addEventListener("click", newZone);
  $("finish-zone").addEventListener("click", finishZone);
  $("delete-zone").addEventListener("click", deleteZone);
  $("zone-list").addEventListener("change", () => { collectRule(); select(Number($("zone-list").value)); });
  $("zone-id").addEventListener("change", () => { collectRule(); select(state.selected); });
  $("rule-type").addEventListener("change", () => {
    const zone = state.zones[state.selected];
    if (zone) { zone.rule = {type: $("rule-type").value}; select(state.selected); }
  });
  $("save").addEventListener("click", save);
  $("datum").addEventListener("change", datumChanged);
  $("fit").addEventListener("click", fit);
}

start().catch((err) => status("save-status", `Cannot load the page: ${err.message}`, "error"));
