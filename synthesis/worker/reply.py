"""A synthesis as an HTTP response: the PNG alone, JSON with base64 PNGs, or multipart/mixed.

Headers on every format: ``X-SIMS-Bank-Version`` (segment ids refer to it), ``X-SIMS-Seed`` and
``Server-Timing`` (``decode``, ``refine``, ``retrieve``, ``canvas``, ``network``, ``encode`` and
``worker``, the sum, in ms).
"""

from __future__ import annotations

import base64
import dataclasses
import time
import uuid
from collections.abc import Sequence

from memory_bank import ClassTable
from memory_bank.png import encode_layout_png, encode_provenance_png, encode_rgb_png
from retrieval_service.http_models import SynthesisSegment, SynthesizeResponse, UnfilledComponent
from retrieval_service.types import SynthesisReply, SynthesizeOptions
from synthesis.canvas.builder import PlacedSegment
from synthesis.pipeline import SynthesisOutput

#: zlib level of the image and canvas PNGs: 1 is several times faster than PIL's 6, for ~15% larger files.
PNG_COMPRESS_LEVEL = 1


def encode_reply(
    output: SynthesisOutput,
    options: SynthesizeOptions,
    classes: ClassTable,
    network_resolution: tuple[int, int],
    *,
    decode_seconds: float = 0.0,
) -> SynthesisReply:
    """The response for one synthesis in the format ``options`` asks for."""
    start = time.perf_counter()
    extras = set(options.extras)
    pngs: dict[str, bytes] = {"image": encode_rgb_png(output.image, PNG_COMPRESS_LEVEL)}
    if "canvas" in extras:
        pngs["canvas"] = encode_rgb_png(output.canvas.canvas, PNG_COMPRESS_LEVEL)
    if "provenance" in extras:
        pngs["provenance"] = encode_provenance_png(output.provenance)
    if "layout" in extras:
        pngs["layout"] = encode_layout_png(output.layout)
    h, w = output.image.shape[:2]
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
        content, media_type = meta.model_dump_json(exclude_none=True).encode(), "application/json"
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


def multipart(pngs: dict[str, bytes], meta: SynthesizeResponse) -> tuple[bytes, str]:
    """``multipart/mixed`` body and content type: one ``image/png`` part per PNG, then ``meta`` (JSON)."""
    boundary = f"sims-{uuid.uuid4().hex}"
    parts = [(name, f"{name}.png", "image/png", data) for name, data in pngs.items()]
    parts.append(("meta", "meta.json", "application/json", meta.model_dump_json(exclude_none=True).encode()))
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


__all__ = ["encode_reply", "multipart", "parse_multipart", "wire_segments"]
