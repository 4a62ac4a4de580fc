// A synthesis result and its panels: the output with its hover card and region highlight, the
// provenance (map or retrieval canvas, and the list of regions), the candidates of a clicked region.

import { photoUrl, segmentThumbnailUrl } from "./api.js";
import { base64ToBytes, decodePng } from "./png.js";

/** One synthesis: the response plus what the page decoded from it. */
export class SynthesisResult {
  constructor(body, request, ms) {
    this.body = body;
    this.request = request; // the fields sent (layout_png, seed, k, pins, layout options)
    this.ms = ms;
    this.width = body.width;
    this.height = body.height;
    this.components = body.components || [];
    this.componentMap = null; // Uint16Array: component index + 1 per output pixel, 0 = none
    this.provenanceMap = null; // Uint32Array: segment id + 1 per output pixel, 0 = no bank pixel
    // Every painted segment's image id and score (also for a pin outside the candidate list).
    this.painted = new Map((body.segments || []).map((s) => [s.component_id, s]));
  }

  static async from(body, request, ms) {
    const result = new SynthesisResult(body, request, ms);
    if (body.components_png) result.componentMap = (await decodePng(base64ToBytes(body.components_png))).data;
    if (body.provenance_png) {
      const { data } = await decodePng(base64ToBytes(body.provenance_png));
      const map = new Uint32Array(result.width * result.height);
      for (let i = 0; i < map.length; i++) map[i] = (data[3 * i] << 16) | (data[3 * i + 1] << 8) | data[3 * i + 2];
      result.provenanceMap = map;
    }
    return result;
  }

  get imageUrl() {
    return `data:image/png;base64,${this.body.image_png}`;
  }

  /** The component index under output pixel (x, y), or null. */
  componentAt(x, y) {
    if (!this.componentMap || x < 0 || y < 0 || x >= this.width || y >= this.height) return null;
    const value = this.componentMap[y * this.width + x];
    return value ? value - 1 : null;
  }

  component(index) {
    return this.components.find((c) => c.index === index) || null;
  }

  /** What fills a component: {segment_id, image_id, image_name, score, pinned} (null if unfilled). */
  source(index) {
    const component = this.component(index);
    const painted = this.painted.get(index);
    const segmentId = component?.segment_id ?? painted?.segment_id;
    if (segmentId == null) return null;
    const candidate = component?.candidates?.find((c) => c.segment_id === segmentId);
    return {
      segment_id: segmentId,
      image_id: candidate?.image_id ?? painted?.image_id,
      image_name: candidate?.image_name ?? null,
      score: candidate?.score ?? painted?.score ?? null,
      pinned: Boolean(component?.pinned),
    };
  }
}

const fmtScore = (score) => (score == null ? "–" : score.toFixed(3));

/** A stable, well-spread colour for a segment id (for the provenance map). */
function segmentColor(id) {
  const h = (id * 0.618033988749895) % 1;
  const s = 0.55 + ((id * 7) % 5) * 0.08;
  const v = 0.65 + ((id * 3) % 4) * 0.09;
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s);
  const q = v * (1 - f * s);
  const t = v * (1 - (1 - f) * s);
  const [r, g, b] = [
    [v, t, p],
    [q, v, p],
    [p, v, t],
    [p, q, v],
    [t, p, v],
    [v, p, q],
  ][i % 6];
  return [r * 255, g * 255, b * 255];
}

/** Draw the provenance map (one colour per source segment, dark where no bank pixel) on a canvas. */
export function drawProvenance(canvas, result) {
  canvas.width = result.width;
  canvas.height = result.height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(result.width, result.height);
  const map = result.provenanceMap;
  if (map) {
    const cache = new Map();
    for (let i = 0; i < map.length; i++) {
      const id = map[i];
      let color = cache.get(id);
      if (!color) cache.set(id, (color = id ? segmentColor(id - 1) : [24, 26, 31]));
      image.data.set(color, 4 * i);
      image.data[4 * i + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
}

/** Highlight `selected` (filled) and `hovered` (outline) components on the overlay canvas. */
export function drawOverlay(canvas, result, selected, hovered) {
  if (!result) return;
  canvas.width = result.width;
  canvas.height = result.height;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const map = result.componentMap;
  if (!map || (selected == null && hovered == null)) return;
  const image = context.createImageData(result.width, result.height);
  const px = image.data;
  const w = result.width;
  const sel = selected == null ? -1 : selected + 1;
  const hov = hovered == null ? -1 : hovered + 1;
  for (let i = 0; i < map.length; i++) {
    const v = map[i];
    if (v !== sel && v !== hov) continue;
    const x = i % w;
    const edge =
      x === 0 || x === w - 1 || i < w || i >= map.length - w || map[i - 1] !== v || map[i + 1] !== v ||
      map[i - w] !== v || map[i + w] !== v;
    if (edge) {
      px.set(v === sel ? [255, 214, 10, 255] : [255, 255, 255, 220], 4 * i);
    } else if (v === sel) {
      px.set([255, 214, 10, 60], 4 * i);
    }
  }
  context.putImageData(image, 0, 0);
}

/** The output pixel under a pointer event on an element showing the result at any CSS size. */
export function pixelAt(event, element, result) {
  const rect = element.getBoundingClientRect();
  return [
    Math.floor(((event.clientX - rect.left) / rect.width) * result.width),
    Math.floor(((event.clientY - rect.top) / rect.height) * result.height),
  ];
}

/** Fill the hover card for component `index` of `result`. */
export function showHoverCard(card, result, index, classes, event) {
  const component = result.component(index);
  const source = result.source(index);
  const className = classes.get(component?.class_id)?.name ?? `class ${component?.class_id ?? "?"}`;
  card.replaceChildren();
  if (source?.image_id != null) {
    const img = document.createElement("img");
    img.src = photoUrl(source.image_id, 160);
    img.alt = "source photo";
    card.append(img);
  }
  const text = document.createElement("div");
  text.className = "hover-text";
  const lines = source
    ? [
        [className + (source.pinned ? " · pinned" : ""), "strong"],
        [source.image_name ?? `image #${source.image_id}`, "name"],
        [`segment #${source.segment_id} · score ${fmtScore(source.score)}`, ""],
      ]
    : [
        [className, "strong"],
        [`no bank segment (${component?.status ?? "unfilled"}): the network paints it`, ""],
      ];
  for (const [line, cls] of lines) {
    const div = document.createElement("div");
    div.textContent = line;
    if (cls) div.className = cls;
    text.append(div);
  }
  card.append(text);
  card.dataset.component = String(index);
  card.dataset.segment = source ? String(source.segment_id) : "";
  card.hidden = false;
  const pad = 16;
  const { innerWidth, innerHeight } = window;
  const box = card.getBoundingClientRect();
  card.style.left = `${Math.min(event.clientX + pad, innerWidth - box.width - pad)}px`;
  card.style.top = `${Math.min(event.clientY + pad, innerHeight - box.height - pad)}px`;
}

/** The list of regions and their sources (provenance of every region). */
export function renderProvenanceList(list, result, classes, { onSelect, onHover }) {
  list.replaceChildren();
  const order = result.components.length
    ? result.components.map((c) => c.index)
    : [...result.painted.keys()].sort((a, b) => a - b);
  // Regions without a segment (mostly specks below the bank's minimum area) are summed up in one line.
  const unfilled = order.filter((index) => !result.source(index));
  for (const index of order.filter((i) => result.source(i))) {
    const component = result.component(index);
    const source = result.source(index);
    const cls = classes.get(component?.class_id ?? result.painted.get(index)?.class_id);
    const li = document.createElement("li");
    li.dataset.component = String(index);
    li.dataset.segment = source ? String(source.segment_id) : "";
    if (source?.pinned) li.classList.add("pinned");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    if (cls) swatch.style.background = `rgb(${cls.color.join(",")})`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${index} · ${cls?.name ?? "?"}`;
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = source
      ? `${source.pinned ? "📌 " : ""}#${source.segment_id} ${source.image_name ?? `image #${source.image_id}`} · ${fmtScore(source.score)}`
      : component?.status ?? "unfilled";
    li.append(swatch, label, detail);
    li.addEventListener("click", () => onSelect(index));
    li.addEventListener("mouseenter", () => onHover(index));
    li.addEventListener("mouseleave", () => onHover(null));
    list.append(li);
  }
  if (unfilled.length) {
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = `+ ${unfilled.length} region${unfilled.length > 1 ? "s" : ""} without a bank segment (the network paints them)`;
    list.append(li);
  }
}

/** The candidates of component `index` as thumbnails with scores; the chosen and pinned ones marked. */
export function renderCandidates(list, result, index, { selectedSegment, onChoose, onPin }) {
  list.replaceChildren();
  const component = result.component(index);
  const source = result.source(index);
  for (const [rank, candidate] of (component?.candidates || []).entries()) {
    const li = document.createElement("li");
    li.dataset.segment = String(candidate.segment_id);
    li.dataset.rank = String(rank);
    li.tabIndex = 0;
    li.title = `mask IoU ${fmtScore(candidate.mask_iou)} + context IoU ${fmtScore(candidate.context_iou)}`;
    if (candidate.segment_id === source?.segment_id) li.classList.add("chosen");
    if (source?.pinned && candidate.segment_id === source.segment_id) li.classList.add("pinned");
    if (candidate.segment_id === selectedSegment) li.classList.add("selected");
    li.setAttribute("aria-selected", String(candidate.segment_id === selectedSegment));
    const img = document.createElement("img");
    img.src = segmentThumbnailUrl(candidate.segment_id, 96);
    img.alt = `segment ${candidate.segment_id}`;
    img.loading = "lazy";
    const caption = document.createElement("div");
    caption.className = "caption";
    const score = document.createElement("b");
    score.textContent = fmtScore(candidate.score);
    const name = document.createElement("span");
    name.textContent = `#${candidate.segment_id} ${candidate.image_name ?? ""}`;
    caption.append(score, name);
    li.append(img, caption);
    li.addEventListener("click", () => onChoose(candidate.segment_id));
    li.addEventListener("dblclick", () => onPin(candidate.segment_id));
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter") onPin(candidate.segment_id);
    });
    list.append(li);
  }
}
