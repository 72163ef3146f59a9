#!/usr/bin/env node
// Drive the real ComfyUI frontend in headless Debian Chromium (never a downloaded browser).
//
// Every command takes --renderer classic|vue (default classic): the frontend's node renderer,
// "Comfy.VueNodes.Enabled" ("Nodes 2.0"). It is set each time: the setting is stored on the server.
//
// It drives frontend 1.32.9 (the one ComfyUI 0.3.75 pins) and 1.58.1 alike: each result says which
// one it met ("frontend"); node ids are reported as strings (1.58 numbers nodes with strings);
// where the two draw the same thing with different markup, the selectors below name both.
//
//   node drive.js run     --url URL --workflow ui.json --out DIR [--concept NAME | --expect NAME] [--timeout SEC]
//       check the four help pages are served, load the UI-format workflow, check the Erase
//       Concepts picker (wait until it lists NAME), pick NAME through the real combo menu
//       (--concept only; --expect leaves the concepts as saved), rewire the `sae` input (unplugged,
//       from Train SAE, back to Load SAE), queue the prompt, wait for every SaveImage /
//       PreviewImage / Inspect Neuron node to show its image and for the training curve, take
//       screenshots. Prints one JSON object on stdout.
//   node drive.js hostile --url URL --workflow ui.json --concept NAME [--out DIR]
//       a workflow whose Erase Concepts node is fed by a Load SAE with a bad file: record what its
//       picker says; then feed it from the Train node (whose text names NAME), open the picker's
//       real combo menu and record what the menu entries contain and whether any script ran.
//   node drive.js templates --url URL --pack NAME --out DIR
//       open the template browser on the pack's category: its cards, whether each thumbnail loaded,
//       their order sorted A → Z; open the first one and report its zoom, whether every node is on
//       screen and whether the canvas draws it in low detail. Two screenshots.
//   node drive.js convert --url URL --workflow ui.json --ui-out saved.json --api-out api.json [--out DIR --name NAME]
//       load a UI-format workflow and write what the frontend saves (UI format) and queues (API format);
//       print where each node is drawn (overlaps, group titles covered, the view's scale); screenshot.
//
// Exit code 0 = success; otherwise the JSON printed has "error".
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.SAEMNESIA_CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function parseArgs(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) out[a.slice(2)] = argv[i + 1]?.startsWith("--") || argv[i + 1] === undefined ? true : argv[++i];
    else out._.push(a);
  }
  return out;
}

// a common artist's screen: the templates are laid out to open at 100% on it
const VIEWPORT = { width: 1920, height: 1080 };

const LOG = []; // browser console errors/warnings, reported with the result or the error
let FRONTEND = null; // the frontend's version (window.__COMFYUI_FRONTEND_VERSION__), reported likewise

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(page, fn, arg, { timeout = 60000, what = "condition", every = 250 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await page.evaluate(fn, arg);
    if (last && last.ok) return last;
    if (last && last.fail) throw new Error(`${what}: ${last.fail}`);
    await sleep(every);
  }
  throw new Error(`timed out after ${timeout / 1000}s waiting for ${what}; last state: ${JSON.stringify(last)}`);
}

const VUE_NODES = "Comfy.VueNodes.Enabled";

// A Nodes 2.0 combo's open list of options: a PrimeVue Select (1.32) or a reka-ui combobox (1.58).
const VUE_OPTIONS = ".p-select-overlay li[role=option], [data-testid=widget-select-default-overlay] [role=option]";
const VUE_MENU = ".p-select-overlay, [data-testid=widget-select-default-overlay]";
// the classic canvas's combo menu (both)
const CLASSIC_MENU = ".litecontextmenu";
const CLASSIC_OPTIONS = ".litecontextmenu .litemenu-entry";
// the template browser's sort menu (both; 1.58 has a second, hidden one for narrow windows)
const TEMPLATE_SORT = { role: "combobox", name: "Sort by" };

async function openComfy(context, url, log, renderer = "classic") {
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") log.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 120000 });
  await waitFor(
    page,
    () => {
      const app = window.comfyAPI?.app?.app;
      if (!app?.graph || !app.canvas) return { ok: false, state: "no app yet" };
      const names = (app.extensions ?? []).map((e) => e.name);
      const types = window.LiteGraph?.registered_node_types ?? {};
      const ready = names.includes("SAEmnesia.ui") && "SAEmnesiaEraseConcepts" in types && "KSampler" in types;
      return ready ? { ok: true } : { ok: false, state: `extensions: ${names.length}, node types: ${Object.keys(types).length}` };
    },
    null,
    { timeout: 120000, what: "the ComfyUI frontend with the SAEmnesia extension" }
  );
  await sleep(1500); // let the frontend finish restoring its start-up workflow before we load ours
  FRONTEND = await page.evaluate(() => String(window.__COMFYUI_FRONTEND_VERSION__ ?? "unknown"));
  const vue = renderer === "vue";
  const now = await page.evaluate(
    async ({ key, vue }) => {
      const setting = window.comfyAPI.app.app.extensionManager.setting;
      if (setting.get(key) !== vue) await setting.set(key, vue);
      return setting.get(key);
    },
    { key: VUE_NODES, vue }
  );
  if (now !== vue) throw new Error(`could not switch ${VUE_NODES} to ${vue}`);
  await sleep(500);
  return page;
}

async function loadWorkflow(page, workflow) {
  await page.evaluate(async (wf) => {
    const app = window.comfyAPI.app.app;
    await app.loadGraphData(wf, true, true, null, { showMissingModelsDialog: false, showMissingNodesDialog: false });
  }, workflow);
}

// state of every Erase Concepts node's picker
function pickerState() {
  const app = window.comfyAPI.app.app;
  const nodes = app.graph.nodes.filter((n) => (n.comfyClass ?? n.type) === "SAEmnesiaEraseConcepts");
  return nodes.map((n) => {
    const picker = n.widgets.find((w) => w.name === "add concept");
    const line = n.saemnesiaStatus;
    const box = line?.isConnected ? line.getBoundingClientRect() : null;
    return {
      id: String(n.id),
      values: picker ? [...picker.options.values] : null,
      status: n.saemnesia?.status ?? null,
      // the status line as the user sees it on the node
      status_text: line?.textContent ?? null,
      status_visible: !!box && box.width > 20 && box.height > 5,
      concepts: n.saemnesia?.concepts ?? null,
      text: n.widgets.find((w) => w.name === "concepts")?.value,
      error: n.saemnesia?.error ?? null,
    };
  });
}

// screen position (page CSS pixels) of the middle of a node's widget
async function widgetPoint(page, nodeId, widgetName) {
  return page.evaluate(
    ({ nodeId, widgetName }) => {
      const app = window.comfyAPI.app.app;
      const node = app.graph.nodes.find((n) => String(n.id) === nodeId);
      const w = node.widgets.find((x) => x.name === widgetName);
      const rect = app.canvas.canvas.getBoundingClientRect();
      const h = w.computedHeight ?? 20;
      const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + w.y + h / 2]);
      return { x: rect.left + cx, y: rect.top + cy };
    },
    { nodeId, widgetName }
  );
}

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

async function pickConcept(page, nodeId, concept, renderer = "classic") {
  if (renderer === "vue") return pickConceptVue(page, nodeId, concept);
  await page.evaluate(() => window.comfyAPI.app.app.canvas.setDirty(true, true));
  await sleep(300);
  const at = await widgetPoint(page, nodeId, "add concept");
  await page.mouse.click(at.x, at.y);
  const entry = page.locator(CLASSIC_OPTIONS, { hasText: concept }).first();
  await entry.waitFor({ state: "visible", timeout: 10000 });
  const labels = await page.locator(CLASSIC_OPTIONS).allInnerTexts();
  return { entry, labels };
}

// Nodes 2.0: each node is DOM; the picker is a Select whose menu is an overlay list.
async function pickConceptVue(page, nodeId, concept) {
  const select = page.locator(`[data-node-id="${nodeId}"] [aria-label="add concept"]`).first();
  await select.waitFor({ state: "visible", timeout: 10000 });
  await select.click();
  const options = page.locator(VUE_OPTIONS);
  await options.first().waitFor({ state: "visible", timeout: 10000 });
  const labels = await options.allInnerTexts();
  // entries read "+ name · kind · latent n" (or just the name): match the name exactly
  const entry = options.filter({ hasText: new RegExp(`^(?:[+✓] )?${escapeRegExp(concept)}(?: ·|$)`) }).first();
  try {
    await entry.waitFor({ state: "visible", timeout: 5000 });
  } catch {
    throw new Error(`the Nodes 2.0 picker has no entry ${JSON.stringify(concept)}; it lists ${JSON.stringify(labels)}`);
  }
  return { entry, labels };
}

// What a Nodes 2.0 node shows in its own inputs (the DOM, not the graph behind it).
function vueInputs(nodeId) {
  const el = document.querySelector(`[data-node-id="${nodeId}"]`);
  if (!el) return null;
  return [...el.querySelectorAll("input, textarea")].map((i) => i.value);
}

// Rewire the Erase node's `sae` input and record what its picker offers at each stage.
async function rewire(page) {
  const wiring = (how) =>
    page.evaluate((how) => {
      const app = window.comfyAPI.app.app;
      const byClass = (c) => app.graph.nodes.find((n) => (n.comfyClass ?? n.type) === c);
      const erase = byClass("SAEmnesiaEraseConcepts");
      const slot = erase.inputs.findIndex((i) => i.name === "sae");
      if (how === "unplug") erase.disconnectInput(slot);
      else byClass(how === "train" ? "SAEmnesiaTrainSAEFromPrompts" : "SAEmnesiaLoadSAE").connect(0, erase, slot);
      return erase.id;
    }, how);
  const settled = (id, prev) =>
    waitFor(
      page,
      ({ id, prev }) => {
        const n = window.comfyAPI.app.app.graph.nodes.find((x) => x.id === id);
        const s = { values: [...n.widgets.find((w) => w.name === "add concept").options.values], status: n.saemnesia.status };
        return { ok: JSON.stringify(s) !== prev && !/loading/.test(s.status), ...s };
      },
      { id, prev },
      { timeout: 15000, what: "the picker to follow the new wiring" }
    );
  const out = {};
  let prev = "";
  for (const how of ["unplug", "train", "load"]) {
    const hasTrain = await page.evaluate(() =>
      window.comfyAPI.app.app.graph.nodes.some((n) => (n.comfyClass ?? n.type) === "SAEmnesiaTrainSAEFromPrompts")
    );
    if (how === "train" && !hasTrain) continue;
    const id = await wiring(how);
    const s = await settled(id, prev);
    out[how] = { values: s.values, status: s.status };
    prev = JSON.stringify(out[how]);
  }
  return out;
}

async function run(opts) {
  const log = LOG;
  const workflow = JSON.parse(fs.readFileSync(opts.workflow, "utf8"));
  const outDir = opts.out;
  fs.mkdirSync(outDir, { recursive: true });
  const timeout = Number(opts.timeout ?? 600) * 1000;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "saemnesia-chromium-"));
  const result = { screenshots: [], log };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: VIEWPORT,
    });
    const renderer = opts.renderer === "vue" ? "vue" : "classic";
    result.renderer = renderer;
    const page = await openComfy(context, opts.url, log, renderer);
    await loadWorkflow(page, workflow);

    // 0. the help pages resolve where the frontend looks for them (/extensions/<pack>/docs/<node>.md)
    result.docs = await page.evaluate(async () => {
      const api = window.comfyAPI.api.api;
      const info = await (await api.fetchApi("/object_info")).json();
      const out = {};
      for (const [name, def] of Object.entries(info)) {
        if (!name.startsWith("SAEmnesia")) continue;
        const pack = def.python_module.split(".")[1];
        const res = await fetch(api.fileURL(`/extensions/${pack}/docs/${name}.md`));
        out[name] = { status: res.status, chars: (await res.text()).length };
      }
      return out;
    });

    // 1. the picker lists the SAE's concepts
    const before = await waitFor(
      page,
      (need) => {
        const app = window.comfyAPI.app.app;
        const nodes = app.graph.nodes.filter((n) => (n.comfyClass ?? n.type) === "SAEmnesiaEraseConcepts");
        if (!nodes.length) return { fail: "no Erase Concepts node in the workflow" };
        const states = nodes.map((n) => ({ id: String(n.id), values: n.widgets.find((w) => w.name === "add concept")?.options.values ?? [], status: n.saemnesia?.status }));
        return { ok: states.every((s) => !need || s.values.includes(need)), states };
      },
      opts.concept || opts.expect || null,
      { timeout: 30000, what: "the concept picker to list the SAE's concepts" }
    );
    result.picker_before = await page.evaluate(pickerState);

    // 2. pick a concept through the real combo menu
    if (opts.concept) {
      const nodeId = before.states[0].id;
      if (renderer === "vue") result.vue_inputs_before = await page.evaluate(vueInputs, nodeId);
      const { entry, labels } = await pickConcept(page, nodeId, opts.concept, renderer);
      result.menu_labels = labels;
      const shot = path.join(outDir, `concept_picker_${renderer}.png`);
      await page.screenshot({ path: shot });
      result.screenshots.push(shot);
      await entry.click();
      await sleep(500);
      result.picker_after = await page.evaluate(pickerState);
      if (renderer === "vue") result.vue_inputs_after = await page.evaluate(vueInputs, nodeId);
      const picked = path.join(outDir, `concept_picked_${renderer}.png`);
      await page.screenshot({ path: picked });
      result.screenshots.push(picked);
    }

    // 3. the picker follows the wiring: unplugged, fed by a Train node, plugged back
    result.rewire = await rewire(page);

    // 4. queue and wait for the images on the nodes
    await page.evaluate(() => {
      window.__saemnesiaRun = { errors: [], train: [] };
      const api = window.comfyAPI.api.api;
      api.addEventListener("execution_error", ({ detail }) => window.__saemnesiaRun.errors.push(detail));
      api.addEventListener("saemnesia.train", ({ detail }) => window.__saemnesiaRun.train.push(detail));
    });
    result.api_prompt = await page.evaluate(async () => (await window.comfyAPI.app.app.graphToPrompt()).output);
    const started = Date.now();
    await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0));
    const done = await waitFor(
      page,
      () => {
        const app = window.comfyAPI.app.app;
        const run = window.__saemnesiaRun;
        if (run.errors.length) return { fail: JSON.stringify(run.errors[0]).slice(0, 3000) };
        const shown = app.graph.nodes
          .filter((n) => ["SaveImage", "PreviewImage", "SAEmnesiaInspectNeuron"].includes(n.comfyClass ?? n.type))
          .map((n) => ({
            id: String(n.id),
            type: n.comfyClass ?? n.type,
            // the classic canvas draws node.imgs; Nodes 2.0 shows <img> elements in the node
            images: [...(n.imgs ?? []), ...document.querySelectorAll(`[data-node-id="${n.id}"] img`)]
              .filter((img) => img.complete && img.naturalWidth > 0)
              .map((img) => ({ src: img.src, width: img.naturalWidth, height: img.naturalHeight })),
          }));
        const curves = app.graph.nodes
          .filter((n) => n.saemnesiaCurve)
          .map((n) => ({ id: String(n.id), points: n.saemnesiaCurve.points.length, total: n.saemnesiaCurve.total, message: n.saemnesiaCurve.message }));
        const ok = shown.length > 0 && shown.every((s) => s.images.length > 0);
        return { ok, shown, curves, train_events: run.train.length };
      },
      null,
      { timeout, what: "the result images to appear on the nodes", every: 1000 }
    );
    result.seconds_to_images = (Date.now() - started) / 1000;
    result.nodes_with_images = done.shown;
    result.curves = done.curves;
    result.train_events = done.train_events;

    await page.evaluate(() => window.comfyAPI.app.app.canvas.setDirty(true, true));
    await sleep(500);
    const shot = path.join(outDir, `erase_workflow_${renderer}.png`);
    await page.screenshot({ path: shot });
    result.screenshots.push(shot);
    return result;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function hostile(opts) {
  const workflow = JSON.parse(fs.readFileSync(opts.workflow, "utf8"));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "saemnesia-chromium-"));
  const result = { log: LOG, screenshots: [] };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: VIEWPORT });
    const renderer = opts.renderer === "vue" ? "vue" : "classic";
    result.renderer = renderer;
    const page = await openComfy(context, opts.url, LOG, renderer);
    // what a payload would call if the browser ever ran it
    await page.evaluate(() => {
      window.__saemnesiaXss = [];
      window.saemnesiaXss = () => window.__saemnesiaXss.push("ran");
    });
    await page.evaluate(`window.__saemnesiaPickerState = ${pickerState.toString()}`); // callable in polls

    await loadWorkflow(page, workflow);
    // 1. fed by Load SAE with a file the server refuses: the picker says so
    const refused = await waitFor(
      page,
      () => {
        const [s] = window.__saemnesiaPickerState();
        return { ok: !!s?.error, ...s };
      },
      null,
      { timeout: 30000, what: "the picker to report the refused SAE file" }
    );
    result.refused = refused;
    // 2. fed by the Train node: the picker offers the names its text plans
    await page.evaluate(() => {
      const app = window.comfyAPI.app.app;
      const byClass = (c) => app.graph.nodes.find((n) => (n.comfyClass ?? n.type) === c);
      const erase = byClass("SAEmnesiaEraseConcepts");
      byClass("SAEmnesiaTrainSAEFromPrompts").connect(0, erase, erase.inputs.findIndex((i) => i.name === "sae"));
    });
    const planned = await waitFor(
      page,
      (need) => {
        const [s] = window.__saemnesiaPickerState();
        return { ok: s.values.includes(need), ...s };
      },
      opts.concept,
      { timeout: 30000, what: "the picker to list the Train node's concepts" }
    );
    result.planned = planned;
    // 3. the real combo menu, as a user opens it (the canvas's context menu, or the Nodes 2.0 Select's list)
    const menu = renderer === "vue" ? VUE_MENU : CLASSIC_MENU;
    const entries = renderer === "vue" ? VUE_OPTIONS : CLASSIC_OPTIONS;
    if (renderer === "vue") {
      await page.locator(`[data-node-id="${planned.id}"] [aria-label="add concept"]`).first().click();
    } else {
      await page.evaluate(() => window.comfyAPI.app.app.canvas.setDirty(true, true));
      await sleep(300);
      const at = await widgetPoint(page, planned.id, "add concept");
      await page.mouse.click(at.x, at.y);
    }
    await page.locator(entries).first().waitFor({ state: "visible", timeout: 10000 });
    await sleep(1500); // time for an injected <img onerror> to fire
    result.menu = await page.evaluate(
      (entries) =>
        [...document.querySelectorAll(entries)].map((e) => {
          // the label's own characters: one text node holding the whole entry's text (markup
          // made of the label would split it into elements, whatever the frontend wraps it in)
          const texts = [];
          const walk = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
          while (walk.nextNode()) if (walk.currentNode.data.trim()) texts.push(walk.currentNode.data);
          return { text: e.textContent.trim(), html: e.innerHTML, one_text_node: texts.length === 1 && texts[0].trim() === e.textContent.trim() };
        }),
      entries
    );
    // elements a label's markup would make (the menu selector may list several menus)
    result.injected = await page.evaluate(
      (menu) => [...document.querySelectorAll(menu)].reduce((n, m) => n + m.querySelectorAll("img, script, svg, iframe, object").length, 0),
      menu
    );
    result.status_text = await page.evaluate(
      (id) => window.comfyAPI.app.app.graph.nodes.find((n) => String(n.id) === id).saemnesiaStatus?.textContent ?? null,
      planned.id
    );
    result.script_ran = await page.evaluate(() => window.__saemnesiaXss.length);
    if (opts.out) {
      fs.mkdirSync(opts.out, { recursive: true });
      const shot = path.join(opts.out, `hostile_concept_menu_${renderer}.png`);
      await page.screenshot({ path: shot });
      result.screenshots.push(shot);
    }
    return result;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// Where the nodes are, as the renderer draws them (title bar included; Nodes 2.0 nodes are
// DOM boxes, often taller than on the canvas), in canvas units: which ones overlap each other,
// which ones reach into a group's title bar, and the view the workflow opened with.
function layoutState(renderer) {
  const app = window.comfyAPI.app.app;
  const ds = app.canvas.ds;
  const boxes = [];
  for (const n of app.graph.nodes) {
    let box;
    if (renderer === "vue") {
      const el = document.querySelector(`[data-node-id="${n.id}"]`);
      if (!el) continue;
      const r = el.getBoundingClientRect();
      const c = app.canvas.canvas.getBoundingClientRect();
      const [x, y] = ds.convertCanvasToOffset([r.left - c.left, r.top - c.top]);
      box = [x, y, r.width / ds.scale, r.height / ds.scale];
    } else {
      const b = n.getBounding();
      box = [b[0], b[1], b[2], b[3]];
    }
    boxes.push({ id: String(n.id), title: n.title, box: box.map((v) => Math.round(v)) });
  }
  const meet = (a, b) => Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]) > 2 && Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]) > 2;
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++) if (meet(boxes[i].box, boxes[j].box)) overlaps.push([boxes[i].title, boxes[j].title]);
  const groups = (app.graph.groups ?? []).map((g) => {
    const [x, y, w, h] = g._bounding ?? g.bounding;
    const bar = [x, y, w, (g.font_size ?? 24) * 1.4];
    return { title: g.title, font_size: g.font_size, covered_by: boxes.filter((b) => meet(b.box, bar)).map((b) => b.title) };
  });
  return { scale: ds.scale, offset: [...ds.offset], boxes, overlaps, groups };
}

async function convert(opts) {
  const log = LOG;
  const workflow = JSON.parse(fs.readFileSync(opts.workflow, "utf8"));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "saemnesia-chromium-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: VIEWPORT });
    const renderer = opts.renderer === "vue" ? "vue" : "classic";
    const page = await openComfy(context, opts.url, log, renderer);
    await loadWorkflow(page, workflow);
    await sleep(renderer === "vue" ? 1500 : 500);
    const out = await page.evaluate(async () => {
      const app = window.comfyAPI.app.app;
      const p = await app.graphToPrompt();
      return { ui: p.workflow, api: p.output };
    });
    out.layout = await page.evaluate(layoutState, renderer);
    if (opts["ui-out"]) fs.writeFileSync(opts["ui-out"], JSON.stringify(out.ui, null, 2) + "\n");
    if (opts["api-out"]) fs.writeFileSync(opts["api-out"], JSON.stringify(out.api, null, 2) + "\n");
    if (opts.out) {
      fs.mkdirSync(opts.out, { recursive: true });
      const stem = typeof opts.name === "string" ? opts.name.replace(/[^\w.-]/g, "_") : path.basename(opts.workflow, ".json");
      await page.screenshot({ path: path.join(opts.out, `${stem}_${renderer}.png`) });
    }
    return { ui: out.ui, api: out.api, layout: out.layout, renderer, log };
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// The template browser as an artist opens it: the pack's category, its cards and thumbnails,
// sorted A → Z, then the first card opened onto the canvas.
async function templates(opts) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "saemnesia-chromium-"));
  const result = { log: LOG, screenshots: [] };
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: VIEWPORT });
    const page = await openComfy(context, opts.url, LOG, opts.renderer === "vue" ? "vue" : "classic");
    await page.evaluate(() => window.comfyAPI.app.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
    const dialog = page.locator("[role=dialog]");
    await dialog.getByText(opts.pack, { exact: true }).first().click();
    const cards = () =>
      page.evaluate(() =>
        [...document.querySelectorAll("[role=dialog] img[alt]")].map((i) => ({
          title: i.alt,
          loaded: i.complete && i.naturalWidth > 0 && !i.src.includes("default-template"),
        }))
      );
    await waitFor(page, () => {
      const imgs = [...document.querySelectorAll("[role=dialog] img[alt]")];
      return { ok: imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0), n: imgs.length };
    }, null, { timeout: 30000, what: "the pack's template cards and their thumbnails" });
    await sleep(500);
    result.cards = await cards();
    await dialog.getByRole(TEMPLATE_SORT.role, { name: TEMPLATE_SORT.name }).filter({ visible: true }).first().click();
    await page.getByRole("option", { name: "A → Z" }).click();
    await sleep(1000);
    result.sorted = await cards();
    fs.mkdirSync(opts.out, { recursive: true });
    const shot = path.join(opts.out, "template_browser.png");
    await page.screenshot({ path: shot });
    result.screenshots.push(shot);
    await dialog.locator(`img[alt="${result.sorted[0].title.replace(/"/g, '\\"')}"]`).first().click();
    await waitFor(page, () => ({ ok: !document.querySelector("[role=dialog]") && window.comfyAPI.app.app.graph.nodes.length > 3 }), null,
      { timeout: 30000, what: "the first template to open" });
    await sleep(1500);
    result.opened = await page.evaluate(() => {
      const app = window.comfyAPI.app.app;
      const c = app.canvas;
      c.ds.computeVisibleArea?.(c.viewport);
      const [vx, vy, vw, vh] = c.ds.visible_area ?? c.visible_area;
      const inside = (n) => {
        const [x, y, w, h] = n.getBounding();
        return x >= vx && y >= vy && x + w <= vx + vw && y + h <= vy + vh;
      };
      return {
        nodes: app.graph.nodes.length,
        scale: c.ds.scale,
        offset: [...c.ds.offset],
        // every node on screen, and drawn with its text (not the low-detail boxes of a far zoom)
        all_visible: app.graph.nodes.every(inside),
        low_quality: c.low_quality ?? null,
      };
    });
    const opened = path.join(opts.out, "template_opened.png");
    await page.screenshot({ path: opened });
    result.screenshots.push(opened);
    return result;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const cmd = opts._[0];
  const commands = { run, convert, hostile, templates };
  if (!opts.url || (!opts.workflow && cmd !== "templates") || !(cmd in commands)) {
    console.error("usage: node drive.js run|convert|hostile --url URL --workflow ui.json [--out DIR] [--concept NAME] [--ui-out F] [--api-out F]");
    process.exit(2);
  }
  try {
    const result = await commands[cmd](opts);
    process.stdout.write(JSON.stringify({ ...result, frontend: FRONTEND }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err?.stack ?? err), log: LOG, frontend: FRONTEND }) + "\n");
    process.exit(1);
  }
}

main();
