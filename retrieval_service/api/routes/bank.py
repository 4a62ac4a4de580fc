"""``GET /bank``: the bank version being served."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter

from memory_bank.png import LayoutSpec
from retrieval_service.api.deps import HolderDep, StateDep
from retrieval_service.http_models import BankCounts, BankGrids, BankInfo, ClassOut, ErrorResponse

router = APIRouter(tags=["bank"])


@router.get("/bank", response_model=BankInfo, responses={503: {"model": ErrorResponse}}, summary="The bank served")
async def bank_info(state: StateDep, holder: HolderDep) -> BankInfo:
    """Version, classes, counts, resolution and code grids of the bank version being served."""
    m = state.bank.manifest
    cfg = state.bank.config
    versions = await to_thread.run_sync(holder.available_versions)
    return BankInfo(
        version=m.bank_version,
        parent_version=m.parent_version,
        created_at=m.created_at,
        format_version=m.format_version,
        resolution=list(m.resolution),
        ignore_value=m.ignore_value,
        min_area=cfg.min_area,
        connectivity=cfg.connectivity,
        context_scale=cfg.context_scale,
        instances=cfg.instances,
        thing_classes=list(cfg.thing_classes),
        classes=[
            ClassOut(id=c.id, name=c.name, color=list(c.color), segments=n)
            for c, n in zip(m.classes, m.counts.segments_per_class, strict=True)
        ],
        counts=BankCounts(
            images=m.counts.images, segments=m.counts.segments, dropped_segments=m.counts.dropped_segments
        ),
        grids=BankGrids(fine_grid=list(cfg.fine_grid), coarse_grids=[list(g) for g in cfg.coarse_grids]),
        loaded_at=state.loaded_at.isoformat(timespec="seconds"),
        available_versions=versions,
        dataset_unlabelled_ids={str(i): name for i, name in LayoutSpec.from_manifest(m).dataset_ids.items()},
    )
