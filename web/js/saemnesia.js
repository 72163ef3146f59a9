// SAEmnesia frontend extension (ComfyUI frontend extension API; tested with frontends 1.32.9 and 1.58.1).
//
// - Erase Concepts: an "add concept" picker filled from the SAE wired into the node. Picking a
//   name toggles it in the `concepts` text; that text stays the only thing saved and queued, so
//   saved workflows and API-format graphs are the same as without this extension.
// - Train SAE from Prompts: a live training curve (loss, FVU, dead-latent fraction vs step)
//   drawn from the "saemnesia.train" websocket events the node sends while it trains.
// - Inspect Neuron: its heatmap is returned as preview images, which ComfyUI already shows
//   on the node; nothing to add here.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const LOAD = "SAEmnesiaLoadSAE";
const ERASE = "SAEmnesiaEraseConcepts";
const TRAIN = "SAEmnesiaTrainSAEFromPrompts";

const PICKER = "add concept";
const STATUS = "picker status";
const CURVE = "training curve";
const PICKER_TIP = "Pick a concept of the connected SAE to add it to (or remove it from) 'concepts'.";
const MAX_HOPS = 32;

// Concept names and kinds come from SAE files and from workflows other people share, and the
// classic combo menu shows option labels as markup in some frontends (1.32: innerHTML) and as
// text in others (1.58: textContent, which escapes by itself). A label is escaped exactly when
// the running frontend's menu reads it as markup, so it shows once-escaped, as text, in both.
// (Labels only ever land in element content, where these four are all that is markup.)
const HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
export const escapeHtml = (text) => String(text ?? "").replace(/[&<>"]/g, (ch) => HTML_ESCAPES[ch]);

// Does the classic menu read an entry's label as markup? Asked of the menu itself: one entry
// added to a detached menu (never shown), as the combo widget adds its options (a string value).
// If the probe cannot tell, labels are escaped: at worst shown escaped, never run.
const MENU_PROBE = "<i>&amp;</i>";
let menuReadsMarkup = null;
export function menuLabelsAreMarkup() {
  if (menuReadsMarkup === null) {
    try {
      const ContextMenu = window.LiteGraph.ContextMenu;
      const menu = Object.create(ContextMenu.prototype);
      menu.root = document.createElement("div");
      ContextMenu.prototype.addItem.call(menu, MENU_PROBE, "probe", {});
      const entry = menu.root.querySelector(".litemenu-entry");
      menuReadsMarkup = !entry || entry.textContent !== MENU_PROBE;
    } catch {
      menuReadsMarkup = true;
    }
  }
  return menuReadsMarkup;
}

const classOf = (node) => node?.comfyClass ?? node?.type;
const widgetOf = (node, name) => node?.widgets?.find((w) => w.name === name);
const rootGraph = () => app.rootGraph ?? app.graph;

// ---------------------------------------------------------------- concept index (server)

const conceptCache = new Map(); // SAE file name -> Promise<payload>

function fetchConcepts(name) {
  if (!conceptCache.has(name)) {
    const request = api
      .fetchApi(`/saemnesia/concepts?sae=${encodeURIComponent(name)}`, { cache: "no-store" })
      .then(async (res) => {
        let body = null;
        try {
          body = await res.json();
        } catch {
          body = null;
        }
        if (!res.ok) throw new Error(body?.error ?? `the server answered ${res.status}`);
        return body;
      });
    // failures are not cached: the file may appear (training, a refresh) a moment later
    request.catch(() => conceptCache.delete(name));
    conceptCache.set(name, request);
  }
  return conceptCache.get(name);
}

// ---------------------------------------------------------------- concepts text <-> list

// The concepts text is split as the server splits it: its separators come with every concept list
// (the picker only offers names once it has one).
export function splitConcepts(text, separators) {
  const items = [""];
  for (const ch of String(text ?? "")) {
    if (String(separators ?? "").includes(ch)) items.push("");
    else items[items.length - 1] += ch;
  }
  return items.map((s) => s.trim()).filter(Boolean);
}

function toggleConcept(text, name, separators) {
  const items = splitConcepts(text, separators);
  const at = items.findIndex((s) => s.toLowerCase() === name.toLowerCase());
  if (at >= 0) items.splice(at, 1);
  else items.push(name);
  return items.join(", ");
}

// ---------------------------------------------------------------- where does the SAE come from

const TRAIN_BOXES = ["objects", "styles", "templates", "labelled_prompts"];

// The concepts a Train SAE node will index (used until its file exists), parsed by the server
// with the grammar training itself uses.
async function fetchPlanned(train) {
  const boxes = Object.fromEntries(TRAIN_BOXES.map((w) => [w, String(widgetOf(train, w)?.value ?? "")]));
  const res = await api.fetchApi("/saemnesia/concepts", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(boxes),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body?.error ?? `the server answered ${res.status}`);
  return body;
}

function trainedFileName(train) {
  let stem = String(widgetOf(train, "name")?.value ?? "").trim();
  if (stem.toLowerCase().endsWith(".safetensors")) stem = stem.slice(0, -".safetensors".length);
  return stem ? `${stem}.safetensors` : null;
}

// Follow the `sae` input upstream (through reroutes) to the node that makes the SAE.
export function upstreamSae(node) {
  const slot = node.inputs?.findIndex((i) => i.name === "sae") ?? -1;
  if (slot < 0 || node.inputs[slot].link == null) return { kind: "none" };
  let src = node.getInputNode(slot);
  for (let hop = 0; src && hop < MAX_HOPS; hop++) {
    const cls = classOf(src);
    if (cls === LOAD) {
      const name = widgetOf(src, "sae_name")?.value;
      return name ? { kind: "file", name } : { kind: "none" };
    }
    if (cls === TRAIN) return { kind: "train", name: trainedFileName(src), train: src };
    if (cls === "Reroute" || src.isVirtualNode) {
      src = src.getInputNode?.(0);
      continue;
    }
    return { kind: "other", title: src.title ?? cls };
  }
  return { kind: "none" };
}

// ---------------------------------------------------------------- Erase Concepts: the picker

function describeKinds(concepts) {
  const counts = {};
  for (const c of concepts) counts[c.kind] = (counts[c.kind] ?? 0) + 1;
  return Object.entries(counts)
    .map(([kind, n]) => `${n} ${kind}${n === 1 ? "" : "s"}`)
    .join(", ");
}

// Nodes 2.0 (the Vue renderer) copies a widget's options once, when it builds the node
// ({...options}); a `values` array assigned later never reaches its Select, which then shows
// "No available options". So the picker keeps one array and changes it in place, through
// Vue's own reactive proxy of it (the frontend and extensions share one Vue via the import
// map), so the open Select sees the change. Without Vue (older frontends) it is a plain splice.
let vueReactive = null;
import("vue")
  .then((vue) => {
    // pickers filled before this resolved need nothing: a Select reads the array when it mounts
    vueReactive = typeof vue?.reactive === "function" ? vue.reactive : null;
  })
  .catch(() => {});

function replaceValues(list, items) {
  let target = list;
  try {
    if (vueReactive) target = vueReactive(list);
  } catch {
    target = list;
  }
  target.splice(0, target.length, ...items);
}

function setPicker(node, patch) {
  const state = node.saemnesia;
  Object.assign(state, patch);
  const picker = widgetOf(node, PICKER);
  if (picker) {
    if (!Array.isArray(picker.options.values)) picker.options.values = [];
    replaceValues(picker.options.values, state.concepts.map((c) => c.name));
  }
  showStatus(node);
  node.setDirtyCanvas?.(true, true);
}

// The picker's state as a line of text on the node, in both renderers (a DOM widget: the
// classic canvas overlays it, Nodes 2.0 mounts it). textContent only: names are never markup.
function showStatus(node) {
  const el = node.saemnesiaStatus;
  if (!el) return;
  const state = node.saemnesia;
  const chosen = splitConcepts(widgetOf(node, "concepts")?.value, state.separators).length;
  const text = state.concepts.length && !state.error ? `${state.status} · ${chosen} chosen` : state.status;
  el.textContent = text;
  el.title = state.error ?? text;
  el.dataset.state = state.error ? "error" : state.concepts.length ? "ready" : "empty";
  el.style.color = state.error ? "#ff8a80" : state.concepts.length ? "#b8e0b0" : "#bbb";
}

function sourceKey(src, train) {
  if (src.kind === "train") {
    return ["train", src.name, ...TRAIN_BOXES.map((w) => widgetOf(train, w)?.value)].join("\u0001");
  }
  return `${src.kind}\u0001${src.name ?? src.title ?? ""}`;
}

async function refreshPicker(node, force = false) {
  const state = node.saemnesia;
  if (!state) return;
  const src = upstreamSae(node);
  const key = sourceKey(src, src.train);
  if (!force && key === state.key) return;
  const token = ++state.token;
  state.key = key;

  if (src.kind === "none") {
    return setPicker(node, { sae: null, source: "none", concepts: [], error: null, status: "connect a Load SAE node" });
  }
  if (src.kind === "other") {
    return setPicker(node, { sae: null, source: "other", concepts: [], error: null, status: `SAE from ${src.title}: type the names` });
  }
  setPicker(node, { sae: src.name, source: src.kind, status: `loading ${src.name}…`, error: null });
  try {
    const body = await fetchConcepts(src.name);
    if (token !== state.token) return; // a newer refresh won
    const concepts = (body.concepts ?? []).map((c) => ({ name: c.name, kind: c.kind, latent: c.latent ?? null }));
    const status = concepts.length
      ? describeKinds(concepts)
      : `no concept index: type neuron:0..${(body.n_latents ?? 1) - 1}`;
    const picker = widgetOf(node, PICKER);
    if (picker) picker.tooltip = PICKER_TIP;
    setPicker(node, { concepts, status, info: body, separators: body.list_separators, error: null });
  } catch (err) {
    if (token !== state.token) return;
    if (src.kind === "train") {
      // not trained yet: offer the names the Train node is about to index
      let planned = null;
      try {
        planned = await fetchPlanned(src.train);
      } catch {
        planned = null; // the server could not read the boxes: nothing to offer yet
      }
      if (token !== state.token) return;
      const concepts = (planned?.concepts ?? []).map((c) => ({ name: c.name, kind: c.kind, latent: null }));
      setPicker(node, { concepts, info: null, separators: planned?.list_separators, error: null,
                        status: `after training: ${describeKinds(concepts) || "none"}` });
    } else {
      const message = String(err?.message ?? err);
      const picker = widgetOf(node, PICKER);
      if (picker) picker.tooltip = message; // the whole message on hover; the widget shows the gist
      setPicker(node, { concepts: [], info: null, error: message, status: /not found/i.test(message) ? "⚠ SAE file not found" : "⚠ cannot read this SAE" });
    }
  }
}

function refreshAllPickers(force = false) {
  const visit = (graph) => {
    for (const node of graph?.nodes ?? graph?._nodes ?? []) {
      if (node.saemnesia) refreshPicker(node, force);
      if (node.subgraph) visit(node.subgraph);
    }
  };
  visit(rootGraph());
}

function setupErase(node) {
  const text = widgetOf(node, "concepts");
  if (!text || widgetOf(node, PICKER)) return;
  node.saemnesia = { key: null, token: 0, sae: null, source: "none", concepts: [], info: null, error: null, status: "connect a Load SAE node" };

  const plainLabel = (value) => {
    const state = node.saemnesia;
    if (value == null || value === "") return state.concepts.length ? "pick a concept…" : state.status;
    const c = state.concepts.find((x) => x.name === value);
    const chosen = splitConcepts(text.value, state.separators).some((s) => s.toLowerCase() === String(value).toLowerCase());
    const detail = c ? ` · ${c.kind}${c.latent != null ? ` · latent ${c.latent}` : ""}` : "";
    return `${chosen ? "✓" : "+"} ${value}${detail}`;
  };
  const safePlain = (value) => {
    try {
      return plainLabel(value);
    } catch {
      return String(value ?? "");
    }
  };
  // The classic menu's label for an option (a string), as markup or text as that menu reads it
  // (see menuLabelsAreMarkup); for no value (null) the text the canvas draws on the widget itself.
  // Frontend 1.58's Nodes 2.0 Select shows these labels too, as text. Never throws: on an
  // exception the frontend falls back to the raw value, unescaped.
  const label = (value) => {
    const text = safePlain(value);
    return value != null && menuLabelsAreMarkup() ? escapeHtml(text) : text;
  };

  // Status line and picker are appended last and never serialized: widgets_values stay
  // positional and identical to a workflow saved without this extension.
  const line = document.createElement("div");
  line.className = "saemnesia-picker-status";
  line.style.cssText = "font:12px sans-serif;line-height:18px;padding:0 14px;white-space:nowrap;overflow:hidden;" +
    "text-overflow:ellipsis;box-sizing:border-box;width:100%;";
  node.saemnesiaStatus = line;
  const status = node.addDOMWidget(STATUS, "saemnesia_status", line, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    margin: 2, // the default (10 each side) leaves a one-line widget no height on the classic canvas
    getMinHeight: () => 22,
    getMaxHeight: () => 22,
  });
  status.serialize = false;

  const picker = node.addWidget(
    "combo",
    PICKER,
    "",
    (value) => {
      if (value) {
        text.value = toggleConcept(text.value, String(value), node.saemnesia.separators);
        text.callback?.(text.value);
        // Nodes 2.0 keeps the picked name in its Select after this callback returns: hand it
        // the empty value again once it is done (the classic canvas needs nothing more).
        queueMicrotask(() => picker.callback?.(""));
      }
      picker.value = "";
      showStatus(node);
      node.setDirtyCanvas?.(true, true);
    },
    // optionLabel and placeholder are read by the Nodes 2.0 Select of frontend 1.32 only (as plain
    // text, which Vue escapes); getOptionLabel by the classic menu and 1.58's Select (see label).
    { values: [], serialize: false, getOptionLabel: label, optionLabel: safePlain, placeholder: "pick a concept…" }
  );
  picker.serialize = false;
  picker.tooltip = PICKER_TIP;

  // typing in `concepts` changes the "n chosen" count
  const textCallback = text.callback;
  text.callback = function (...args) {
    const r = textCallback?.apply(this, args);
    showStatus(node);
    return r;
  };

  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const r = onConnectionsChange?.apply(this, args);
    queueMicrotask(() => refreshPicker(node));
    return r;
  };
  // backstop for changes no callback reports (e.g. a script setting a widget value)
  const onDrawForeground = node.onDrawForeground;
  node.onDrawForeground = function (...args) {
    const r = onDrawForeground?.apply(this, args);
    refreshPicker(node);
    return r;
  };
  queueMicrotask(() => refreshPicker(node));
}

// Load SAE / Train SAE: tell the pickers when the choice of SAE changes.
function watchSource(node) {
  const onWidgetChanged = node.onWidgetChanged;
  node.onWidgetChanged = function (...args) {
    const r = onWidgetChanged?.apply(this, args);
    refreshAllPickers();
    return r;
  };
}

// ---------------------------------------------------------------- Train SAE: live curve

const SERIES = [
  { key: "loss", label: "loss", color: "#ff9f43", axis: "left" },
  { key: "fvu", label: "FVU", color: "#54a0ff", axis: "right" },
  { key: "dead_fraction", label: "dead", color: "#ee5253", axis: "right" },
];

function drawCurve(node) {
  const curve = node.saemnesiaCurve;
  const canvas = curve?.canvas;
  if (!canvas || !canvas.isConnected) return;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(60, canvas.clientWidth);
  const h = Math.max(40, canvas.clientHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";

  const pts = curve.points;
  if (!pts.length) {
    ctx.fillStyle = "#888";
    ctx.textAlign = "center";
    ctx.fillText(curve.message ?? "the training curve appears here while the SAE trains", w / 2, h / 2);
    return;
  }
  const pad = { l: 34, r: 30, t: 18, b: 14 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  const total = Math.max(curve.total || 0, pts[pts.length - 1].step, 1);
  const finite = (v) => typeof v === "number" && Number.isFinite(v);
  const lossMax = Math.max(1e-9, ...pts.map((p) => p.loss).filter(finite));
  const rightMax = Math.max(1, ...pts.map((p) => p.fvu).filter(finite));
  const x = (step) => pad.l + (step / total) * pw;
  const y = (v, max) => pad.t + ph - (Math.min(v, max) / max) * ph;

  // axes
  ctx.strokeStyle = "#444";
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.l, pad.t, pw, ph);
  ctx.fillStyle = "#999";
  ctx.textAlign = "right";
  ctx.fillText(lossMax.toPrecision(2), pad.l - 3, pad.t);
  ctx.fillText("0", pad.l - 3, pad.t + ph);
  ctx.textAlign = "left";
  ctx.fillText(rightMax.toPrecision(2), pad.l + pw + 3, pad.t);
  ctx.fillText("0", pad.l + pw + 3, pad.t + ph);
  ctx.textAlign = "center";
  ctx.fillText(curve.text || `training step ${pts[pts.length - 1].step}/${total}`, pad.l + pw / 2, h - pad.b / 2 + 1);

  for (const s of SERIES) {
    const max = s.axis === "left" ? lossMax : rightMax;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    for (const p of pts) {
      if (!finite(p[s.key])) continue;
      const px = x(p.step);
      const py = y(p[s.key], max);
      if (started) ctx.lineTo(px, py);
      else ctx.moveTo(px, py);
      started = true;
    }
    ctx.stroke();
  }

  // supervision starts here: the loss jumps (BCE and decorrelation terms join it), FVU does not
  if (Number.isFinite(curve.superviseAt) && curve.superviseAt > 0 && curve.superviseAt < total) {
    const sx = x(curve.superviseAt);
    ctx.save();
    ctx.setLineDash([3, 3]);
    ctx.strokeStyle = "#bbb";
    ctx.beginPath();
    ctx.moveTo(sx, pad.t);
    ctx.lineTo(sx, pad.t + ph);
    ctx.stroke();
    ctx.restore();
    ctx.fillStyle = "#bbb";
    ctx.textAlign = sx > pad.l + pw / 2 ? "right" : "left";
    ctx.fillText("supervision starts", sx + (sx > pad.l + pw / 2 ? -3 : 3), pad.t + 8);
  }

  // legend with the latest values
  const last = pts[pts.length - 1];
  let lx = pad.l;
  ctx.textAlign = "left";
  for (const s of SERIES) {
    const v = last[s.key];
    const text = `${s.label} ${finite(v) ? (s.key === "dead_fraction" ? `${(v * 100).toFixed(1)}%` : v.toPrecision(3)) : "–"}`;
    ctx.fillStyle = s.color;
    ctx.fillRect(lx, 5, 8, 8);
    ctx.fillStyle = "#ddd";
    ctx.fillText(text, lx + 11, 9);
    lx += ctx.measureText(text).width + 22;
  }
  if (curve.message) {
    ctx.fillStyle = "#aaa";
    ctx.textAlign = "right";
    ctx.fillText(curve.message, w - 4, 9);
  }
}

function setupTrain(node) {
  if (widgetOf(node, CURVE)) return;
  const wrap = document.createElement("div");
  wrap.className = "saemnesia-curve";
  wrap.style.cssText = "width:100%;height:100%;box-sizing:border-box;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "width:100%;height:100%;display:block;border-radius:4px;";
  wrap.appendChild(canvas);
  node.saemnesiaCurve = { canvas, points: [], total: 0, message: null, superviseAt: null, text: "" };

  const widget = node.addDOMWidget(CURVE, "saemnesia_curve", wrap, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => 120,
    getMaxHeight: () => 260,
  });
  widget.serialize = false;
  // near the top, under the sockets, not below 20 widgets; widgets_values stay the inputs' values in
  // order (LiteGraph would leave a hole at the curve's index, and loading shifts by one)
  node.widgets.splice(node.widgets.indexOf(widget), 1);
  node.widgets.unshift(widget);
  const onSerialize = node.onSerialize;
  node.onSerialize = function (o) {
    onSerialize?.apply(this, arguments);
    if (o.widgets_values) o.widgets_values = this.widgets.filter((w) => w.serialize !== false).map((w) => w.value);
  };
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => drawCurve(node)).observe(wrap);
  requestAnimationFrame(() => drawCurve(node));
}

// A multiline box shows its name only while empty (the placeholder); once filled, nothing says
// which box is "objects" and which is "templates". Keep a small name tag in its corner.
function labelTextareas(node, tries = 120) {
  let pending = false;
  for (const w of node.widgets ?? []) {
    const el = w.inputEl ?? w.element;
    if (!(el instanceof HTMLTextAreaElement) || el.dataset.saemnesiaLabelled) continue;
    const host = el.parentElement;
    if (!host) {
      pending = true; // not mounted yet
      continue;
    }
    el.dataset.saemnesiaLabelled = "1";
    const tag = document.createElement("div");
    tag.className = "saemnesia-textarea-label";
    tag.textContent = String(w.label ?? w.name).replace(/_/g, " "); // text, never markup
    tag.style.cssText = "position:absolute;bottom:2px;right:14px;font:10px sans-serif;padding:0 4px;border-radius:3px;" +
      "background:rgba(0,0,0,.55);color:#ddd;pointer-events:none;z-index:1;";
    if (getComputedStyle(host).position === "static") host.style.position = "relative";
    host.appendChild(tag);
  }
  if (pending && tries > 0) requestAnimationFrame(() => labelTextareas(node, tries - 1));
}

function nodeByExecutionId(id) {
  // "12" at the top level, "5:12" inside the subgraph of node 5
  let graph = rootGraph();
  let node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById(/^\d+$/.test(part) ? Number(part) : part);
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

function onTrainEvent({ detail }) {
  if (!detail || detail.node == null) return;
  const node = nodeByExecutionId(detail.node);
  const curve = node?.saemnesiaCurve;
  if (!curve) return;
  if (detail.paused) {
    curve.message = "paused — queue again to resume";
    curve.text = String(detail.text ?? "");
    drawCurve(node);
    return;
  }
  const point = { step: Number(detail.step) || 0, loss: detail.loss, fvu: detail.fvu, dead_fraction: detail.dead_fraction };
  curve.superviseAt = detail.supervise_at == null ? null : Number(detail.supervise_at);
  curve.text = String(detail.text ?? "");
  const last = curve.points[curve.points.length - 1];
  if (last && point.step <= last.step) curve.points = []; // a new run (or a resume) started
  curve.points.push(point);
  curve.total = Number(detail.total) || curve.total;
  curve.message = point.step >= curve.total ? "done" : null;
  drawCurve(node);
}

// ---------------------------------------------------------------- registration

app.registerExtension({
  name: "SAEmnesia.ui",

  async setup() {
    api.addEventListener("saemnesia.train", onTrainEvent);
    api.addEventListener("executed", ({ detail }) => {
      // a Train node just saved a new SAE: its concept index may have changed
      const node = detail && nodeByExecutionId(detail.display_node ?? detail.node);
      if (classOf(node) === TRAIN) {
        const name = trainedFileName(node);
        if (name) conceptCache.delete(name);
        if (node.saemnesiaCurve) {
          node.saemnesiaCurve.message = "saved";
          drawCurve(node);
        }
        refreshAllPickers(true);
      }
    });
    api.addEventListener("execution_interrupted", () => {
      const visit = (graph) => {
        for (const node of graph?.nodes ?? []) {
          if (node.saemnesiaCurve?.points.length && node.saemnesiaCurve.message !== "saved") {
            node.saemnesiaCurve.message = "paused — queue again to resume";
            drawCurve(node);
          }
          if (node.subgraph) visit(node.subgraph);
        }
      };
      visit(rootGraph());
    });
  },

  async nodeCreated(node) {
    const cls = classOf(node);
    if (cls === ERASE) setupErase(node);
    else if (cls === TRAIN) {
      setupTrain(node);
      labelTextareas(node);
      watchSource(node);
    } else if (cls === LOAD) watchSource(node);
  },

  async afterConfigureGraph() {
    refreshAllPickers(true);
  },

  async refreshComboInNodes() {
    // the user pressed R: the files in models/sae may have changed
    conceptCache.clear();
    refreshAllPickers(true);
  },
});
