// SIMS Studio: paint a layout, synthesize, see and choose the real segment behind every region.
// One state object; the panels are in paint.js (layout), results.js (output, provenance,
// candidates); api.js talks to the service, png.js codes the PNGs.

import * as api from "./api.js";
import { LabelCanvas, resizeNearest, UNLABELLED } from "./paint.js";
import { base64ToBytes, bytesToBase64, decodePng, digest, encodeGreyPng, pngHeader } from "./png.js";
import {
  drawOverlay,
  drawProvenance,
  pixelAt,
  renderCandidates,
  renderProvenanceList,
  showHoverCard,
  SynthesisResult,
} from "./results.js";

const CANDIDATES = 12; // candidates listed per region
const EXTRAS = ["provenance", "segments", "components", "canvas"];
const LAYOUT_OPTIONS = ["layout_resize", "layout_colors", "dataset_ids"];
const RECORD_FORMAT = "sims-studio-record";

const $ = (selector) => document.querySelector(selector);

/** Everything the page knows; exposed as `window.studio` for the console (and the browser tests). */
const state = {
  bank: null,
  classes: new Map(), // id -> {id, name, color}
  paint: null, // LabelCanvas
  pins: {}, // component index (string) -> segment id
  result: null, // SynthesisResult shown
  selected: null, // component index whose candidates are listed
  chosenSegment: null, // candidate clicked in the list (pin it with #pin)
  hovered: null,
  busy: false,
  resultSeq: 0,
  variations: [],
  lastRecordDigest: null, // digest to compare after loading a record
  sourceImage: null, // {id, name}: the bank image whose layout was loaded (excluded from retrieval)
};
window.studio = state;

// ---------------------------------------------------------------- status and progress

let busyTimer = 0;

function setStatus(text, kind = "idle") {
  const status = $("#status");
  status.dataset.state = kind;
  $("#status-text").textContent = text;
}

/** Run `task` with the progress indicator on and the synthesis buttons off; report errors. */
async function withProgress(label, task) {
  if (state.busy) return null;
  state.busy = true;
  document.body.classList.add("busy");
  for (const b of document.querySelectorAll("[data-needs-idle]")) b.disabled = true;
  const start = performance.now();
  setStatus(`${label}…`, "busy");
  busyTimer = setInterval(() => setStatus(`${label}… ${((performance.now() - start) / 1000).toFixed(1)} s`, "busy"), 100);
  try {
    return await task();
  } catch (error) {
    console.error(error);
    setStatus(error.message || String(error), "error");
    return null;
  } finally {
    clearInterval(busyTimer);
    state.busy = false;
    document.body.classList.remove("busy");
    for (const b of document.querySelectorAll("[data-needs-idle]")) b.disabled = false;
    updateButtons();
  }
}

function updateButtons() {
  const hasResult = Boolean(state.result);
  $("#download-png").disabled = !hasResult;
  $("#download-json").disabled = !hasResult;
  $("#variations").disabled = state.busy || !hasResult;
  $("#pin").disabled = state.busy || state.chosenSegment == null || state.selected == null;
  $("#unpin").disabled = state.busy || state.selected == null || !(String(state.selected) in state.pins);
  $("#undo").disabled = !state.paint?.undoStack.length;
  $("#redo").disabled = !state.paint?.redoStack.length;
  $("#pin-count").textContent = Object.keys(state.pins).length ? `${Object.keys(state.pins).length} pinned` : "";
}

// ---------------------------------------------------------------- palette and tools

function buildPalette() {
  const palette = $("#palette");
  palette.replaceChildren();
  for (const [n, cls] of [...state.classes.values()].entries()) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.class = String(cls.id);
    button.title = `${cls.name} (id ${cls.id}, ${cls.segments} segments)${n < 10 ? ` — key ${(n + 1) % 10}` : ""}`;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${cls.color.join(",")})`;
    const name = document.createElement("span");
    name.textContent = cls.name;
    button.append(swatch, name);
    button.addEventListener("click", () => selectClass(cls.id));
    palette.append(button);
  }
  selectClass([...state.classes.keys()][0]);
}

function selectClass(id) {
  state.paint.classId = id;
  if (state.paint.tool === "eraser") selectTool("brush");
  for (const b of document.querySelectorAll("#palette button")) b.setAttribute("aria-pressed", String(Number(b.dataset.class) === id));
}

function selectTool(tool) {
  state.paint.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
  $("#canvas-paint").dataset.tool = tool;
}

function setBrushSize(size) {
  const value = Math.max(2, Math.min(120, Math.round(size)));
  state.paint.brushSize = value;
  $("#brush-size").value = String(value);
  $("#brush-size-value").textContent = `${value} px`;
}

function layoutChanged() {
  // Component indices follow the layout: pins made on another layout would name other regions.
  if (Object.keys(state.pins).length) {
    state.pins = {};
    setStatus("layout changed: pins cleared", "idle");
  }
  updateButtons();
}

// ---------------------------------------------------------------- starting layouts

async function searchImages() {
  const q = $("#image-search").value.trim();
  const list = $("#image-results");
  try {
    const { total, images } = await api.searchImages(q, 30);
    list.replaceChildren();
    for (const image of images) {
      const li = document.createElement("li");
      li.dataset.image = String(image.image_id);
      li.title = `load the layout of ${image.name}`;
      const img = document.createElement("img");
      img.src = api.photoUrl(image.image_id, 96);
      img.alt = "";
      img.loading = "lazy";
      const name = document.createElement("span");
      name.textContent = image.name;
      li.append(img, name);
      li.addEventListener("click", () => loadBankLayout(image.image_id, image.name));
      list.append(li);
    }
    list.dataset.query = q; // what the list shows (a slower, older search may answer last)
    $("#image-count").textContent = `${images.length} of ${total}`;
  } catch (error) {
    $("#image-count").textContent = error.message;
  }
}

async function loadBankLayout(imageId, name) {
  await withProgress(`loading the layout of ${name}`, async () => {
    const png = await decodePng(await api.imageLayout(imageId));
    state.paint.load(png.data);
    setSourceImage({ id: imageId, name });
    setStatus(`layout of ${name} loaded: paint over it, then synthesize`);
  });
}

/** The bank image a layout came from (null: none). Its segments are left out of retrieval unless
 * the checkbox is cleared: otherwise the "synthesis" would paste its own photo back. */
function setSourceImage(source) {
  state.sourceImage = source;
  $("#exclude-source-row").hidden = source == null;
  $("#exclude-source-name").textContent = source == null ? "" : source.name;
}

/** The options every synthesis of the painted layout sends besides seed, k and pins. */
function layoutOptions() {
  const source = state.sourceImage;
  return source != null && $("#exclude-source").checked ? { exclude_images: [source.id] } : {};
}

/** The layout options an uploaded PNG needs, from its header: size and colour type. */
function optionsForUpload(header) {
  const [h, w] = state.bank.resolution;
  return {
    layout_resize: header.width !== w || header.height !== h,
    layout_colors: header.colorType === 2 || header.colorType === 6,
    dataset_ids: false,
  };
}

async function uploadLayout(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  await withProgress(`reading ${file.name}`, async () => {
    const header = pngHeader(bytes);
    const options = { ...optionsForUpload(header) };
    const [h, w] = state.bank.resolution;
    if (!options.layout_resize && !options.layout_colors && (header.colorType === 0 || header.colorType === 3)) {
      const png = await decodePng(bytes);
      const maxId = Math.max(...state.classes.keys());
      const plain = header.bitDepth <= 8 && png.data.every((v) => v === UNLABELLED || v <= maxId);
      if (plain) {
        state.paint.load(png.data);
        setStatus(`${file.name} loaded`);
        return;
      }
    }
    // Anything else goes to the service with the options it needs, which maps it to bank ids
    // (and says which option is missing when the header did not tell: e.g. a dataset's raw ids).
    setStatus(`${file.name}: asking the service to map it…`, "busy");
    const result = await synthesizeWithOptionRetry(bytes, options);
    const layout = await decodePng(base64ToBytes(result.body.layout_png));
    const labels =
      layout.width === w && layout.height === h ? layout.data : resizeNearest(layout.data, layout.width, layout.height, w, h);
    state.paint.load(labels);
    const used = LAYOUT_OPTIONS.filter((o) => result.request[o]);
    showResult(result);
    setStatus(`${file.name} loaded${used.length ? ` with ${used.join(", ")}` : ""}; synthesized with seed ${result.request.seed}`);
  });
}

async function synthesizeWithOptionRetry(bytes, options) {
  const fields = { ...options };
  for (let attempt = 0; ; attempt++) {
    try {
      return await runSynthesis({ layoutPng: bytes, seed: seed(), pins: {}, options: fields, extras: [...EXTRAS, "layout"] });
    } catch (error) {
      const wanted = LAYOUT_OPTIONS.find((o) => !fields[o] && error.message?.includes(`${o}=true`));
      if (error.status !== 422 || !wanted || attempt > 2) throw error;
      fields[wanted] = true;
    }
  }
}

// ---------------------------------------------------------------- synthesis

const seed = () => Math.max(0, Math.floor(Number($("#seed").value) || 0));
const topK = () => Math.max(1, Math.min(100, Math.floor(Number($("#k").value) || 5)));

/** POST /synthesize for a layout PNG; answers a SynthesisResult (not yet shown). */
async function runSynthesis({ layoutPng, seed: s, pins, options = {}, extras = EXTRAS }) {
  const request = { layout_png: bytesToBase64(layoutPng), seed: s, k: topK(), pins: { ...pins }, ...options };
  const { body, ms } = await api.synthesize({ ...request, candidates: CANDIDATES, extras });
  return SynthesisResult.from(body, request, ms);
}

async function currentLayoutPng() {
  return encodeGreyPng(state.paint.width, state.paint.height, state.paint.labels);
}

/** Synthesize the painted layout with `seedValue` and the current pins, and show it. */
async function synthesize(seedValue = seed(), label = "synthesizing") {
  $("#seed").value = String(seedValue);
  return withProgress(label, async () => {
    const layoutPng = await currentLayoutPng();
    const result = await runSynthesis({ layoutPng, seed: seedValue, pins: state.pins, options: layoutOptions() });
    showResult(result);
    return result;
  });
}

function showResult(result) {
  state.result = result;
  state.resultSeq += 1;
  const output = $("#output");
  output.src = result.imageUrl;
  output.dataset.seq = String(state.resultSeq);
  output.dataset.seed = String(result.request.seed);
  $("#output-empty").hidden = true;
  drawProvenance($("#provenance"), result);
  $("#provenance-canvas").src = result.body.canvas_png ? `data:image/png;base64,${result.body.canvas_png}` : "";
  renderProvenanceList($("#provenance-list"), result, state.classes, { onSelect: selectComponent, onHover: hoverComponent });
  const timing = Object.entries(result.body.timings_ms || {})
    .filter(([k]) => ["retrieve", "canvas", "network"].includes(k))
    .map(([k, v]) => `${k} ${Math.round(v)} ms`)
    .join(" · ");
  $("#result-meta").textContent =
    `seed ${result.request.seed} · k ${result.request.k} · bank ${result.body.bank_version} · ${Math.round(result.ms)} ms` +
    (timing ? ` (${timing})` : "");
  // Keep the selected region's candidates in view across re-syntheses of the same layout.
  if (state.selected != null && result.component(state.selected)) selectComponent(state.selected, { keepChoice: false });
  else clearSelection();
  drawOverlay($("#output-overlay"), result, state.selected, null);
  setStatus(`done in ${(result.ms / 1000).toFixed(2)} s`);
  updateButtons();
}

// ---------------------------------------------------------------- regions, candidates, pins

function clearSelection() {
  state.selected = null;
  state.chosenSegment = null;
  $("#candidates").replaceChildren();
  $("#candidates-title").textContent = "Click a region of the output to see its candidates";
  for (const li of document.querySelectorAll("#provenance-list li")) li.classList.remove("selected");
  updateButtons();
}

function selectComponent(index, { keepChoice = false } = {}) {
  const result = state.result;
  const component = result?.component(index);
  if (!component) {
    clearSelection();
    return;
  }
  state.selected = index;
  if (!keepChoice) state.chosenSegment = null;
  const cls = state.classes.get(component.class_id);
  const pinned = String(index) in state.pins ? ` · pinned to #${state.pins[index]}` : "";
  $("#candidates-title").textContent =
    `Region ${index} · ${cls?.name ?? component.class_id} · ${component.area.toLocaleString()} px${pinned}`;
  renderCandidates($("#candidates"), result, index, {
    selectedSegment: state.chosenSegment,
    onChoose: (segmentId) => {
      state.chosenSegment = segmentId;
      selectComponent(index, { keepChoice: true });
    },
    onPin: (segmentId) => {
      state.chosenSegment = segmentId;
      pinChosen();
    },
  });
  for (const li of document.querySelectorAll("#provenance-list li")) {
    li.classList.toggle("selected", li.dataset.component === String(index));
  }
  drawOverlay($("#output-overlay"), result, index, state.hovered);
  updateButtons();
}

function hoverComponent(index) {
  state.hovered = index;
  drawOverlay($("#output-overlay"), state.result, state.selected, index);
}

/** Pin the chosen candidate to the selected region and synthesize again with the same seed. */
async function pinChosen() {
  if (state.selected == null || state.chosenSegment == null) return;
  state.pins = { ...state.pins, [String(state.selected)]: state.chosenSegment };
  await synthesize(seed(), `pinning segment #${state.chosenSegment}`);
}

async function unpinSelected() {
  if (state.selected == null) return;
  const pins = { ...state.pins };
  delete pins[String(state.selected)];
  state.pins = pins;
  await synthesize(seed(), "unpinning");
}

/** A new seed: the pinned regions stay, the others re-roll. */
const reroll = () => synthesize(Math.floor(Math.random() * 1_000_000), "re-rolling");

function bindResultPanel(element) {
  element.addEventListener("mousemove", (event) => {
    const result = state.result;
    if (!result) return;
    const index = result.componentAt(...pixelAt(event, element, result));
    const card = $("#hover-card");
    if (index == null) {
      card.hidden = true;
      if (state.hovered != null) hoverComponent(null);
      return;
    }
    if (index !== state.hovered) hoverComponent(index);
    showHoverCard(card, result, index, state.classes, event);
  });
  element.addEventListener("mouseleave", () => {
    $("#hover-card").hidden = true;
    hoverComponent(null);
  });
  element.addEventListener("click", (event) => {
    const result = state.result;
    if (!result) return;
    const index = result.componentAt(...pixelAt(event, element, result));
    if (index == null) clearSelection();
    else selectComponent(index);
  });
}

// ---------------------------------------------------------------- variations

async function runVariations() {
  const n = Math.max(1, Math.min(12, Math.floor(Number($("#n-variations").value) || 4)));
  const strip = $("#variation-strip");
  strip.replaceChildren();
  state.variations = [];
  const base = seed();
  const layoutPng = await currentLayoutPng();
  await withProgress(`${n} variations`, async () => {
    for (let i = 1; i <= n; i++) {
      setStatus(`variation ${i} of ${n}…`, "busy");
      const result = await runSynthesis({ layoutPng, seed: base + i, pins: state.pins, options: layoutOptions() });
      state.variations.push(result);
      const li = document.createElement("li");
      li.dataset.seed = String(base + i);
      li.title = `seed ${base + i}: click to open it`;
      const img = document.createElement("img");
      img.src = result.imageUrl;
      img.alt = `seed ${base + i}`;
      const caption = document.createElement("span");
      caption.textContent = `seed ${base + i}`;
      li.append(img, caption);
      li.addEventListener("click", () => {
        $("#seed").value = String(result.request.seed);
        showResult(result);
      });
      strip.append(li);
    }
  });
  if (!state.busy) setStatus(`${state.variations.length} variations; click one to open it`);
}

// ---------------------------------------------------------------- download and load

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function makeRecord(result) {
  const { layout_png: layoutPng, seed: s, k, pins, ...options } = result.request;
  const header = pngHeader(base64ToBytes(layoutPng));
  return {
    format: RECORD_FORMAT,
    version: 1,
    layout_png_base64: layoutPng,
    size: [header.height, header.width],
    output_size: [result.height, result.width],
    seed: s,
    pins,
    options: { k, ...options },
    bank_version: result.body.bank_version,
    image_digest: await digest(base64ToBytes(result.body.image_png)),
    provenance: result.components.map((c) => {
      const source = result.source(c.index);
      return {
        component: c.index,
        class_id: c.class_id,
        class_name: state.classes.get(c.class_id)?.name ?? null,
        bbox: c.bbox,
        area: c.area,
        status: c.status,
        segment_id: source?.segment_id ?? null,
        image_id: source?.image_id ?? null,
        image_name: source?.image_name ?? null,
        score: source?.score ?? null,
        pinned: Boolean(c.pinned),
      };
    }),
    created_at: new Date().toISOString(),
  };
}

async function downloadJson() {
  const record = await makeRecord(state.result);
  download(`sims-seed${record.seed}.json`, new Blob([JSON.stringify(record, null, 1)], { type: "application/json" }));
}

function downloadPng() {
  const result = state.result;
  download(`sims-seed${result.request.seed}.png`, new Blob([base64ToBytes(result.body.image_png)], { type: "image/png" }));
}

/** Load a record: its layout onto the canvas, its seed, pins and options; synthesize; compare digests. */
async function loadRecord(file) {
  let record;
  try {
    record = JSON.parse(await file.text());
  } catch {
    setStatus(`${file.name} is not JSON`, "error");
    return;
  }
  if (record.format !== RECORD_FORMAT || !record.layout_png_base64) {
    setStatus(`${file.name} is not a SIMS Studio record`, "error");
    return;
  }
  const layoutPng = base64ToBytes(record.layout_png_base64);
  const { k = 5, ...options } = record.options || {};
  const header = pngHeader(layoutPng);
  const [h, w] = state.bank.resolution;
  if (header.width === w && header.height === h && header.colorType === 0) {
    state.paint.load((await decodePng(layoutPng)).data);
  }
  state.pins = { ...(record.pins || {}) }; // after load(): a layout change clears pins
  $("#seed").value = String(record.seed);
  $("#k").value = String(k);
  const result = await withProgress(`reproducing ${file.name}`, async () => {
    const r = await runSynthesis({ layoutPng, seed: record.seed, pins: state.pins, options });
    showResult(r);
    return r;
  });
  if (!result) return;
  const got = await digest(base64ToBytes(result.body.image_png));
  const same = got === record.image_digest;
  const output = $("#output");
  output.dataset.reproduced = String(same);
  const versionNote =
    record.bank_version !== result.body.bank_version
      ? ` (recorded on bank ${record.bank_version}, served ${result.body.bank_version})`
      : "";
  setStatus(
    same ? `${file.name}: reproduced bit for bit (${got.slice(0, 19)}…)` : `${file.name}: the image differs${versionNote}`,
    same ? "idle" : "error",
  );
}

// ---------------------------------------------------------------- keyboard

function bindKeys() {
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && key === "z") {
      event.preventDefault();
      if (event.shiftKey) state.paint.redo();
      else state.paint.undo();
    } else if (mod && key === "y") {
      event.preventDefault();
      state.paint.redo();
    } else if (mod && key === "enter") {
      event.preventDefault();
      synthesize();
    } else if (mod) {
      return;
    } else if (key === "b") selectTool("brush");
    else if (key === "f") selectTool("fill");
    else if (key === "e") selectTool("eraser");
    else if (key === "[") setBrushSize(state.paint.brushSize / 1.25);
    else if (key === "]") setBrushSize(state.paint.brushSize * 1.25);
    else if (key === "r" && !state.busy) reroll();
    else if (key === "p" && !$("#pin").disabled) pinChosen();
    else if (key === "escape") clearSelection();
    else if (/^[0-9]$/.test(key)) {
      const ids = [...state.classes.keys()];
      const id = ids[(Number(key) + 9) % 10];
      if (id != null) selectClass(id);
    }
  });
}

// ---------------------------------------------------------------- start

function bindBrushRing() {
  const canvas = $("#canvas-paint");
  const ring = $("#brush-ring");
  canvas.addEventListener("pointermove", (event) => {
    if (state.paint.tool === "fill") {
      ring.hidden = true;
      return;
    }
    const rect = canvas.getBoundingClientRect();
    const d = (state.paint.brushSize * rect.width) / state.paint.width;
    ring.hidden = false;
    ring.style.width = ring.style.height = `${d}px`;
    ring.style.left = `${event.clientX - rect.left - d / 2}px`;
    ring.style.top = `${event.clientY - rect.top - d / 2}px`;
  });
  canvas.addEventListener("pointerleave", () => (ring.hidden = true));
}

async function start() {
  setStatus("loading the bank…", "busy");
  try {
    state.bank = await api.bankInfo();
  } catch (error) {
    setStatus(`no bank: ${error.message}`, "error");
    return;
  }
  const [h, w] = state.bank.resolution;
  for (const cls of state.bank.classes) state.classes.set(cls.id, cls);
  $("#bank-info").textContent =
    `bank ${state.bank.version} · ${state.bank.counts.images.toLocaleString()} images · ` +
    `${state.bank.counts.segments.toLocaleString()} segments · ${w}×${h}`;
  const colors = new Map([...state.classes.values()].map((c) => [c.id, c.color]));
  state.paint = new LabelCanvas($("#canvas-paint"), { width: w, height: h, colors, onChange: layoutChanged });
  $("#paint-stage").style.aspectRatio = `${w} / ${h}`;
  $("#output-stage").style.aspectRatio = `${w} / ${h}`;
  $("#provenance-stage").style.aspectRatio = `${w} / ${h}`;
  $("#canvas-stage").style.aspectRatio = `${w} / ${h}`;
  buildPalette();
  selectTool("brush");
  setBrushSize(Number($("#brush-size").value));
  bindBrushRing();
  bindKeys();
  bindResultPanel($("#output-stage"));
  bindResultPanel($("#provenance-stage"));
  bindResultPanel($("#canvas-stage"));

  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => selectTool(b.dataset.tool));
  $("#brush-size").addEventListener("input", (e) => setBrushSize(Number(e.target.value)));
  $("#undo").addEventListener("click", () => state.paint.undo());
  $("#redo").addEventListener("click", () => state.paint.redo());
  $("#new-empty").addEventListener("click", () => {
    state.paint.clear();
    setSourceImage(null);
  });
  $("#synthesize").addEventListener("click", () => synthesize());
  $("#reroll").addEventListener("click", reroll);
  $("#pin").addEventListener("click", pinChosen);
  $("#unpin").addEventListener("click", unpinSelected);
  $("#variations").addEventListener("click", runVariations);
  $("#download-png").addEventListener("click", downloadPng);
  $("#download-json").addEventListener("click", downloadJson);
  $("#load-json").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) {
      setSourceImage(null); // a record carries its own options (exclusions included)
      await loadRecord(file);
    }
  });
  $("#upload-layout").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) {
      setSourceImage(null);
      await uploadLayout(file);
    }
  });
  let searchTimer = 0;
  $("#image-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(searchImages, 200);
  });
  searchImages();
  updateButtons();
  setStatus("paint a layout (or start from a bank image), then Synthesize");
  document.body.dataset.ready = "true";
}

start();
