// The layout being painted: a label map (one class id per pixel, 255 = unlabelled) at the bank's
// resolution, shown on a <canvas> in the class colours. Brush, flood fill, eraser, undo and redo.

export const UNLABELLED = 255;
const HISTORY = 60; // undo steps kept (a 360x480 snapshot is 170 KB)

export class LabelCanvas {
  /**
   * @param {HTMLCanvasElement} canvas shown at any CSS size; its pixel size becomes width x height
   * @param {{width:number, height:number, colors:Map<number, number[]>, onChange?:Function}} options
   */
  constructor(canvas, { width, height, colors, onChange }) {
    this.canvas = canvas;
    this.width = canvas.width = width;
    this.height = canvas.height = height;
    this.colors = colors;
    this.onChange = onChange || (() => {});
    this.labels = new Uint8Array(width * height).fill(UNLABELLED);
    this.undoStack = [];
    this.redoStack = [];
    this.tool = "brush"; // brush | fill | eraser
    this.classId = 0;
    this.brushSize = 14; // diameter, in label pixels
    this.context = canvas.getContext("2d");
    this.image = this.context.createImageData(width, height);
    this.frame = 0;
    this._bindPointer();
    this.render();
  }

  /** Map a pointer event to label-map coordinates. */
  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) / rect.width) * this.width,
      ((event.clientY - rect.top) / rect.height) * this.height,
    ];
  }

  _bindPointer() {
    let last = null;
    this.canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      const [x, y] = this.point(event);
      this.snapshot();
      if (this.tool === "fill") {
        this.fill(Math.floor(x), Math.floor(y), this.classId);
        this.changed();
        return;
      }
      this.canvas.setPointerCapture(event.pointerId);
      last = [x, y];
      this.disc(x, y);
      this.scheduleRender();
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const [x, y] = this.point(event);
      this.line(last[0], last[1], x, y);
      last = [x, y];
      this.scheduleRender();
    });
    const end = () => {
      if (!last) return;
      last = null;
      this.changed();
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
  }

  get paintValue() {
    return this.tool === "eraser" ? UNLABELLED : this.classId;
  }

  disc(cx, cy) {
    const r = this.brushSize / 2;
    const value = this.paintValue;
    const y0 = Math.max(0, Math.floor(cy - r));
    const y1 = Math.min(this.height - 1, Math.ceil(cy + r));
    const x0 = Math.max(0, Math.floor(cx - r));
    const x1 = Math.min(this.width - 1, Math.ceil(cx + r));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r * r) this.labels[y * this.width + x] = value;
      }
    }
  }

  line(xa, ya, xb, yb) {
    const steps = Math.max(1, Math.ceil(Math.hypot(xb - xa, yb - ya) / Math.max(1, this.brushSize / 4)));
    for (let i = 1; i <= steps; i++) this.disc(xa + ((xb - xa) * i) / steps, ya + ((yb - ya) * i) / steps);
  }

  /** Flood fill (4-connected) of the region of equal labels around (x, y) with `value`. */
  fill(x, y, value) {
    const { width, height, labels } = this;
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    const target = labels[y * width + x];
    if (target === value) return;
    const stack = [y * width + x];
    while (stack.length) {
      const i = stack.pop();
      if (labels[i] !== target) continue;
      // Scan the run left and right, then queue the rows above and below.
      let left = i;
      const row = i - (i % width);
      while (left > row && labels[left - 1] === target) left--;
      let right = i;
      while (right < row + width - 1 && labels[right + 1] === target) right++;
      for (let j = left; j <= right; j++) {
        labels[j] = value;
        if (j >= width && labels[j - width] === target) stack.push(j - width);
        if (j < width * (height - 1) && labels[j + width] === target) stack.push(j + width);
      }
    }
  }

  /** Record the current labels for undo (before a change). */
  snapshot() {
    this.undoStack.push(this.labels.slice());
    if (this.undoStack.length > HISTORY) this.undoStack.shift();
    this.redoStack.length = 0;
  }

  undo() {
    return this._travel(this.undoStack, this.redoStack);
  }

  redo() {
    return this._travel(this.redoStack, this.undoStack);
  }

  /** One step through history: the labels from the top of `from`, the current ones kept on `to`. */
  _travel(from, to) {
    if (!from.length) return false;
    to.push(this.labels);
    this.labels = from.pop();
    this.changed();
    return true;
  }

  /** Replace the whole label map (undoable): a bank image's layout, an upload, a record. */
  load(labels) {
    if (labels.length !== this.labels.length) throw new Error("label map of the wrong size");
    this.snapshot();
    this.labels = Uint8Array.from(labels);
    this.changed();
  }

  clear() {
    this.load(new Uint8Array(this.labels.length).fill(UNLABELLED));
  }

  changed() {
    this.render();
    this.onChange(this);
  }

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  render() {
    const px = this.image.data;
    const { labels, colors, width } = this;
    for (let i = 0; i < labels.length; i++) {
      const value = labels[i];
      const color = value === UNLABELLED ? null : colors.get(value);
      if (color) {
        px[4 * i] = color[0];
        px[4 * i + 1] = color[1];
        px[4 * i + 2] = color[2];
        px[4 * i + 3] = 255;
      } else {
        // Unlabelled (or an id outside the palette): a faint checkerboard.
        const y = (i / width) | 0;
        const shade = ((i % width >> 4) + (y >> 4)) & 1 ? 58 : 46;
        px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = shade;
        px[4 * i + 3] = 255;
      }
    }
    this.context.putImageData(this.image, 0, 0);
  }

  /** Pixel counts per label value (for the palette's coverage hints). */
  histogram() {
    const counts = new Uint32Array(256);
    for (const v of this.labels) counts[v]++;
    return counts;
  }
}

/** Nearest-neighbour resampling of a one-channel map (same sampling as cv2's INTER_NEAREST). */
export function resizeNearest(data, width, height, outWidth, outHeight) {
  const out = new Uint8Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    const sy = Math.min(height - 1, Math.floor((y * height) / outHeight));
    for (let x = 0; x < outWidth; x++) {
      out[y * outWidth + x] = data[sy * width + Math.min(width - 1, Math.floor((x * width) / outWidth))];
    }
  }
  return out;
}
