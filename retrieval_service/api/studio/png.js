// PNG codecs for label maps: the browser's <canvas> cannot read single-channel or 16-bit PNGs
// exactly (it converts to 8-bit RGBA through colour management), so the page encodes layouts and
// decodes layouts, component maps and provenance maps itself. zlib comes from the browser's
// CompressionStream / DecompressionStream ("deflate" is the zlib format PNG stores).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }; // colour type -> samples per pixel

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (the PNG/zlib polynomial) of bytes. */
export function crc32(bytes, crc = 0xffffffff) {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

async function transform(bytes, stream) {
  const out = new Response(new Blob([bytes]).stream().pipeThrough(stream));
  return new Uint8Array(await out.arrayBuffer());
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** An 8-bit greyscale PNG of `pixels` (Uint8Array, row-major, width*height): a label map. */
export async function encodeGreyPng(width, height, pixels) {
  const raw = new Uint8Array((width + 1) * height); // each row: filter byte 0 (none), then the row
  for (let y = 0; y < height; y++) raw.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header.set([8, 0, 0, 0, 0], 8); // bit depth 8, greyscale, deflate, adaptive filtering, no interlace
  const parts = [
    new Uint8Array(SIGNATURE),
    chunk("IHDR", header),
    chunk("IDAT", await transform(raw, new CompressionStream("deflate"))),
    chunk("IEND", new Uint8Array(0)),
  ];
  return new Uint8Array(await new Blob(parts).arrayBuffer());
}

/** Just the header: {width, height, bitDepth, colorType, channels}; throws if not a PNG. */
export function pngHeader(bytes) {
  if (bytes.length < 33 || SIGNATURE.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const colorType = bytes[25];
  return {
    width: view.getUint32(16),
    height: view.getUint32(20),
    bitDepth: bytes[24],
    colorType,
    channels: CHANNELS[colorType],
    interlaced: bytes[28] !== 0,
  };
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * Decode a non-interlaced PNG to its raw samples: {width, height, channels, bitDepth, colorType,
 * data, palette}. `data` is row-major and interleaved: a Uint16Array for 16-bit images, else a
 * Uint8Array (palette images give their indices; sub-byte depths are unpacked to one per sample).
 */
export async function decodePng(bytes) {
  const head = pngHeader(bytes);
  if (head.interlaced) throw new Error("interlaced PNGs are not supported; save it without interlacing");
  if (!head.channels) throw new Error(`unknown PNG colour type ${head.colorType}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const idat = [];
  let palette = null;
  for (let pos = 8; pos + 8 <= bytes.length; ) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    if (type === "IDAT") idat.push(data);
    else if (type === "PLTE") palette = data;
    else if (type === "IEND") break;
    pos += 12 + length;
  }
  const { width, height, bitDepth, channels } = head;
  const raw = await transform(new Uint8Array(await new Blob(idat).arrayBuffer()), new DecompressionStream("deflate"));
  const bitsPerPixel = channels * bitDepth;
  const bpp = Math.max(1, bitsPerPixel >> 3); // filter unit: bytes per pixel, at least 1
  const stride = Math.ceil((width * bitsPerPixel) / 8);
  if (raw.length < (stride + 1) * height) throw new Error("truncated PNG data");
  const rows = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = rows.subarray(y * stride, (y + 1) * stride);
    const up = y > 0 ? rows.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? row[i - bpp] : 0;
      const b = up[i];
      const c = i >= bpp ? up[i - bpp] : 0;
      const x = src[i];
      row[i] =
        filter === 0 ? x
        : filter === 1 ? x + a
        : filter === 2 ? x + b
        : filter === 3 ? x + ((a + b) >> 1)
        : filter === 4 ? x + paeth(a, b, c)
        : x;
    }
  }
  let data;
  const samples = width * channels;
  if (bitDepth === 16) {
    data = new Uint16Array(samples * height);
    for (let i = 0; i < data.length; i++) data[i] = (rows[2 * i] << 8) | rows[2 * i + 1];
  } else if (bitDepth === 8) {
    data = rows;
  } else {
    data = new Uint8Array(samples * height);
    const perByte = 8 / bitDepth;
    const mask = (1 << bitDepth) - 1;
    for (let y = 0; y < height; y++) {
      for (let i = 0; i < samples; i++) {
        const byte = rows[y * stride + Math.floor(i / perByte)];
        data[y * samples + i] = (byte >> (8 - bitDepth * ((i % perByte) + 1))) & mask;
      }
    }
  }
  return { ...head, data, palette };
}

/** Standard base64 of bytes. */
export function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

/** Bytes of standard base64. */
export function base64ToBytes(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** "sha256:<hex>" of bytes (or "crc32:<hex>" where the page is not a secure context: no crypto.subtle). */
export async function digest(bytes) {
  if (globalThis.crypto?.subtle) {
    const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return "sha256:" + Array.from(hash, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return "crc32:" + crc32(bytes).toString(16).padStart(8, "0");
}
