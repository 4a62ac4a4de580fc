// The service's HTTP API, as the page uses it (the same OpenAPI contract as retrieval_service.client).
// URLs are relative, so the page works behind a proxy's path prefix too.

/** An error answer of the service: `{error, message, details}` plus the HTTP status. */
export class ApiError extends Error {
  constructor(status, kind, message, details) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.details = details;
  }
}

async function check(response) {
  if (response.ok) return response;
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { error: "http_error", message: `${response.status} ${response.statusText}` };
  }
  throw new ApiError(response.status, body.error, body.message || `HTTP ${response.status}`, body.details);
}

async function getJson(url) {
  return (await check(await fetch(url))).json();
}

/** GET /bank: version, resolution, classes (id, name, color) and counts. */
export const bankInfo = () => getJson("bank");

/** GET /images: bank images whose file name contains `q`. */
export const searchImages = (q, limit = 40, offset = 0) =>
  getJson(`images?${new URLSearchParams({ q, limit, offset })}`);

/** GET /images/{id}/layout: the bank image's label map as PNG bytes. */
export async function imageLayout(imageId) {
  const response = await check(await fetch(`images/${imageId}/layout`));
  return new Uint8Array(await response.arrayBuffer());
}

/** URL of a bank photo's thumbnail (longest side `size`). */
export const photoUrl = (imageId, size = 160) => `images/${imageId}/photo?size=${size}`;

/** URL of a segment's RGBA crop (alpha = its mask). */
export const segmentThumbnailUrl = (segmentId, size = 96) => `segments/${segmentId}/thumbnail?size=${size}`;

/**
 * POST /synthesize as JSON: `fields` are SynthesizeRequest's (layout_png, seed, k, pins, candidates,
 * extras, layout options...). Answers the parsed JSON body and the elapsed milliseconds.
 */
export async function synthesize(fields, { signal } = {}) {
  const start = performance.now();
  const response = await check(
    await fetch("synthesize", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ format: "json", ...fields }),
      signal,
    }),
  );
  return { body: await response.json(), ms: performance.now() - start };
}
