"""A synthesis as an HTTP response: the PNG alone, JSON with base64 PNGs, or multipart/mixed.

Headers on every format: ``X-SIMS-Bank-Version`` (segment ids refer to it), ``X-SIMS-Seed`` and
``Server-Timing`` (``decode``, ``refine``, ``retrieve``, ``canvas``, ``network``, ``seam_blend``, ``encode`` and
``worker``, the sum, in ms).

A layout sent at another size than the bank's (``layout_resize``) is answered at its own size:
:func:`arrays_at` resizes the image and canvas (area down, linear up) and the provenance,
components and layout maps (nearest neighbour), and scales the components' boxes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memory_bank import ClassTable
from memory_bank.images import resize_label, resize_photo
from memory_bank.png import encode_components_png, encode_layout_png, encode_provenance_png, encode_rgb_png
from retrieval_service.http_models import (
    ComponentCandidate,
    SynthesisComponent,
    SynthesisSegment,
    SynthesizeResponse,
    UnfilledComponent,
)
from retrieval_service.types import SynthesisReply, SynthesizeOptions
from synthesis.canvas.builder import PlacedSegment
from synthesis.pipeline import SynthesisOutput

#: zlib level of the image and canvas PNGs: 1 is several times faster than PIL's 6, for ~15% larger files.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class OutputArrays:
    """A synthesis's arrays at the size the layout was sent at (see :func:`arrays_at`)."""

    image: np.ndarray  # (H, W, 3) uint8
    canvas: np.ndarray  # (H, W, 3) uint8
    provenance: np.ndarray  # (H, W) int64 segment ids, -1 where none
    layout: np.ndarray  # (H, W) uint8
    components: np.ndarray  # (H, W) uint16, component index + 1, 0 where none
    scale: tuple[float, float]  # (rows, cols) of the output per pixel of the bank's frame


def arrays_at(output: SynthesisOutput, size: tuple[int, int] | None = None) -> OutputArrays:
    """The output's arrays at ``size`` (H, W) (default: the bank's, i.e. unchanged)."""
    frame = output.image.shape[:2]
    size = tuple(size or frame)  # type: ignore[assignment]
    comps = output.canvas.components
    component_map = comps.component_map if comps is not None else np.zeros(frame, np.uint16)
    return OutputArrays(
        image=resize_photo(output.image, size),
        canvas=resize_photo(np.asarray(output.canvas.canvas), size),
        provenance=resize_label(np.asarray(output.provenance), size),
        layout=resize_label(output.layout, size),
        components=resize_label(component_map, size),
        scale=(size[0] / frame[0], size[1] / frame[1]),
    )


def encode_reply(
    output: SynthesisOutput,
    options: SynthesizeOptions,
    classes: ClassTable,
    network_resolution: tuple[int, int],
    *,
    decode_seconds: float = 0.0,
    size: tuple[int, int] | None = None,
) -> SynthesisReply:
    """The response for one synthesis in the format ``options`` asks for, at ``size`` (default: the bank's)."""
    start = time.perf_counter()
    extras = set(options.extras)
    arrays = arrays_at(output, size)
    pngs: dict[str, bytes] = {"image": encode_rgb_png(arrays.image, PNG_COMPRESS_LEVEL)}
    if "canvas" in extras:
        pngs["canvas"] = encode_rgb_png(arrays.canvas, PNG_COMPRESS_LEVEL)
    if "provenance" in extras:
        pngs["provenance"] = encode_provenance_png(arrays.provenance)
    if "layout" in extras:
        pngs["layout"] = encode_layout_png(arrays.layout)
    if "components" in extras:
        pngs["components"] = encode_components_png(arrays.components)
    h, w = arrays.image.shape[:2]
    meta = SynthesizeResponse(
        bank_version=output.bank_version,
        seed=options.seed,
        k=options.k,
        coarse=options.coarse,
        height=h,
        width=w,
        network_resolution=list(network_resolution),
        elision_band=None if output.elision is None else output.elision.band,
        elision_rate=None if output.elision is None else output.elision.white_fraction,
        segments=wire_segments(output.segments, classes) if "segments" in extras else None,
        unfilled=[UnfilledComponent(component_id=c, status=st) for c, st in output.canvas.unfilled]  # type: ignore[arg-type]
        if "segments" in extras
        else None,
        components=wire_components(output, options.candidates, arrays.scale),
    )
    # Timings: the PNGs are the encoding's cost; the JSON around them is small.
    timings = {"decode": decode_seconds, **{k: v for k, v in output.timings.items() if k != "total"}}
    timings["encode"] = time.perf_counter() - start
    timings["worker"] = sum(timings.values())
    fmt = options.reply_format
    if fmt == "png":
        content, media_type = pngs["image"], "image/png"
    elif fmt == "json":
        b64 = {f"{name}_png": base64.b64encode(data).decode("ascii") for name, data in pngs.items()}
        meta = meta.model_copy(update={**b64, "timings_ms": _ms(timings)})
        content, media_type = meta_json(meta), "application/json"
    else:
        content, media_type = multipart(pngs, meta.model_copy(update={"timings_ms": _ms(timings)}))
    headers = {
        "X-SIMS-Bank-Version": output.bank_version,
        "X-SIMS-Seed": str(options.seed),
        "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timings.items()),
    }
    return SynthesisReply(content, media_type, headers)


def wire_segments(segments: Sequence[PlacedSegment], classes: ClassTable) -> list[SynthesisSegment]:
    """The painted segments as a reply lists them: each :class:`PlacedSegment` with its class's name."""
    return [SynthesisSegment(**dataclasses.asdict(s), class_name=classes.names[s.class_id]) for s in segments]


def wire_components(
    output: SynthesisOutput, candidates: int, scale: tuple[float, float] = (1.0, 1.0)
) -> list[SynthesisComponent]:
    """Every component of the layout as a reply lists it: box at the output's size (``scale``), the
    segment painted for it, whether it was pinned, and its top ``candidates`` matches."""
    canvas = output.canvas
    if canvas.retrieval is None:
        return []
    names = canvas.retrieval.image_names
    sy, sx = scale
    out = []
    for c in canvas.retrieval.components:
        chosen = c.chosen
        listed = list(c.matches[:candidates])
        if candidates and chosen is not None and chosen not in listed:
            listed.append(chosen)  # a pinned segment from outside the top `candidates`
        y0, x0, y1, x1 = c.bbox
        bbox = [int(np.floor(y0 * sy)), int(np.floor(x0 * sx)), int(np.ceil(y1 * sy)), int(np.ceil(x1 * sx))]
        out.append(
            SynthesisComponent(
                index=c.component_id,
                class_id=c.class_id,
                bbox=bbox,
                area=c.area,
                status=str(c.status),  # type: ignore[arg-type]
                segment_id=None if chosen is None else chosen.segment_id,
                pinned=c.component_id in canvas.pinned,
                candidates=[
                    ComponentCandidate(**dataclasses.asdict(m), image_name=names.get(m.image_id)) for m in listed
                ],
            )
        )
    return out


def meta_json(meta: SynthesizeResponse) -> bytes:
    """The JSON of a reply: fields not set are left out, but a component's unfilled ``segment_id`` stays a null."""
    body = meta.model_dump(mode="json", exclude_none=True, exclude={"components"})
    if meta.components is not None:
        body["components"] = [c.model_dump(mode="json") for c in meta.components]
    return json.dumps(body, separators=(",", ":")).encode()


def multipart(pngs: dict[str, bytes], meta: SynthesizeResponse) -> tuple[bytes, str]:
    """``multipart/mixed`` body and content type: one ``image/png`` part per PNG, then ``meta`` (JSON)."""
    boundary = f"sims-{uuid.uuid4().hex}"
    parts = [(name, f"{name}.png", "image/png", data) for name, data in pngs.items()]
    parts.append(("meta", "meta.json", "application/json", meta_json(meta)))
    out = bytearray()
    for name, filename, media_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: attachment; name="{name}"; filename="{filename}"\r\n'.encode()
        out += f"Content-Type: {media_type}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/mixed; boundary={boundary}"


def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 3) for k, v in timings.items()}


def parse_multipart(content: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a :func:`multipart` body by name (for clients and tests)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + content)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True)
    return parts


__all__ = ["arrays_at", "encode_reply", "multipart", "parse_multipart", "wire_components", "wire_segments"]
