"""Reading a layout request: JSON with a base64 PNG, or a multipart upload with option fields.

``/retrieve`` and ``/synthesize`` take the same two shapes; this is the one reader they share.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from memory_bank.png import png_from_base64
from retrieval_service.http_errors import ApiError
from retrieval_service.http_models import ErrorResponse
from retrieval_service.types import LAYOUT_FIELDS, LayoutFields

OptionsT = TypeVar("OptionsT", bound=BaseModel)

#: The documented errors of reading a layout request.
_LAYOUT_REQUEST_ERRORS = {
    400: "A multipart body that cannot be parsed.",
    413: "Body or layout larger than the limits.",
    415: "Neither JSON nor multipart.",
    422: "Bad options, not a PNG label map, wrong size, unknown class ids or colours (the message names the "
    "layout option that would accept it), pins that cannot be honoured.",
}


def layout_request_errors(route_errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route that reads a layout request: its errors, then the route's own."""
    errors = {**_LAYOUT_REQUEST_ERRORS, **route_errors}
    return {status: {"model": ErrorResponse, "description": text} for status, text in errors.items()}


def layout_request_body(json_model: type[BaseModel], upload_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the two body shapes :func:`read_layout_request` reads.

    The routes read their bodies themselves (JSON or multipart), so FastAPI cannot infer the schemas.
    """
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_model.model_json_schema()},
                "multipart/form-data": {"schema": upload_model.model_json_schema()},
            },
        }
    }


async def read_layout_request(
    request: Request,
    *,
    json_model: type[BaseModel],
    options_model: type[OptionsT],
    fields: tuple[str, ...],
    list_fields: dict[str, Callable[[str], Any]] | None = None,
) -> tuple[bytes, bytes | None, OptionsT, LayoutFields]:
    """The PNG bytes, the instance map PNG (None without), the validated options and the layout options
    of a JSON or multipart request.

    JSON bodies validate against ``json_model`` (its ``layout_png`` holds the base64 PNG, its optional
    ``instances_png`` that of the instance map); multipart bodies carry the PNG as file field ``layout``,
    the instance map as optional file field ``instances``, the plain option ``fields`` and the
    :data:`~retrieval_service.types.LAYOUT_FIELDS` as strings, and each of ``list_fields`` as one
    string turned into a value by its parser (a comma-separated list, a JSON object).
    """
    list_fields = list_fields or {}
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        try:
            req = json_model.model_validate_json(body)
        except ValidationError as e:
            raise RequestValidationError(_located(e, "body")) from None
        data = req.model_dump(exclude={"layout_png", "instances_png"})
        options, layout = _split(options_model, data)
        text = getattr(req, "instances_png", None)
        instances = png_from_base64(text, "instances_png") if text else None
        return png_from_base64(req.layout_png), instances, options, layout  # type: ignore[attr-defined]
    if content_type == "multipart/form-data":
        try:
            limit = len(fields) + len(LAYOUT_FIELDS) + len(list_fields) + 2
            form = await request.form(max_files=2, max_fields=limit)
        except HTTPException as e:
            if e.status_code != 400:  # e.g. the 413 of the body size limit
                raise
            raise ApiError(400, "invalid_multipart", f"the multipart body could not be parsed: {e.detail}") from None
        upload = form.get("layout")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "multipart body needs a file field named 'layout' (the PNG)")
        stray = [k for k, v in form.multi_items() if isinstance(v, UploadFile) and k not in ("layout", "instances")]
        if stray:  # an option sent as a file is not silently dropped
            raise ApiError(400, "invalid_multipart", f"only 'layout' and 'instances' may be files, not {stray[0]!r}")
        if len(form.getlist("layout")) > 1 or len(form.getlist("instances")) > 1:
            raise ApiError(400, "invalid_multipart", "send one file 'layout' and at most one file 'instances'")
        instances = form.get("instances")
        if instances is not None and not isinstance(instances, UploadFile):
            raise ApiError(422, "invalid_request", "multipart field 'instances' must be a file (the instance map PNG)")
        names = (*fields, *LAYOUT_FIELDS)
        _reject_unknown_fields(form, {*names, *list_fields})
        values: dict[str, Any] = {k: v for k in names if isinstance(v := form.get(k), str) and v.strip()}
        for name, parse in list_fields.items():
            text = form.get(name)
            if isinstance(text, str) and text.strip():
                values[name] = parse(text)
        try:
            options, layout = _split(options_model, values)
        except ValidationError as e:
            raise RequestValidationError(_located(e, "form")) from None
        return await upload.read(), await instances.read() if instances else None, options, layout
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send the layout as application/json or multipart/form-data, not {content_type or 'no content type'}",
    )


def _reject_unknown_fields(form: FormData, option_names: set[str]) -> None:
    """A misspelled or unknown multipart field is a 422, as an unknown JSON key is (``extra_forbidden``).

    (A third file is already a 400: the form is parsed with ``max_files=2``, the layout and its instances.)
    """
    problems = [
        {"loc": ("form", name), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
        for name in dict.fromkeys(form.keys())
        if name not in ("layout", "instances") and name not in option_names
    ]
    if problems:
        raise RequestValidationError(problems)


def _split(options_model: type[OptionsT], values: dict[str, Any]) -> tuple[OptionsT, LayoutFields]:
    """The options model's fields and the layout fields of one request's values (a ValidationError if bad)."""
    options = options_model.model_validate({k: v for k, v in values.items() if k in options_model.model_fields})
    layout = LayoutFields.model_validate({k: v for k, v in values.items() if k in LAYOUT_FIELDS})
    return options, layout


def parse_ids(text: str) -> list[int]:
    """The multipart ``exclude_images`` field: comma-separated bank image ids, e.g. ``3,17``."""
    try:
        return [int(p) for p in split_list(text)]
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"exclude_images must be comma-separated integers, got {text[:80]!r}"
        ) from None


def parse_pins(text: str) -> dict[str, Any]:
    """The multipart ``pins`` field: a JSON object, e.g. ``{"3": 1207}`` (its values are validated by the model)."""
    try:
        pins = json.loads(text)
    except ValueError:
        pins = None
    if not isinstance(pins, dict):
        raise ApiError(422, "invalid_request", f'pins must be a JSON object like {{"3": 1207}}, got {text[:80]!r}')
    return pins


def split_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``."""
    return [p for p in text.replace(" ", "").split(",") if p]


def _located(error: ValidationError, where: str) -> list[dict[str, Any]]:
    return [{**e, "loc": (where, *e["loc"])} for e in error.errors(include_url=False)]
