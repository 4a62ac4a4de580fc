"""What every dataset reader provides: a class table, samples, and shards for parallel builds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from memory_bank import ClassTable, DatasetError
from memory_bank.classes import IGNORE
from memory_bank.images import read_label, read_photo
from memory_bank.sequences import SequenceFilter


@dataclass(frozen=True)
class SampleRef:
    """Where one image/label pair lives. Cheap to pickle, so it can travel to Dask workers."""

    image_path: Path
    label_path: Path
    split: str

    def relative_to(self, root: Path) -> tuple[str, str]:
        return self.image_path.relative_to(root).as_posix(), self.label_path.relative_to(root).as_posix()


@dataclass(frozen=True)
class Sample:
    """A decoded pair: (H, W, 3) uint8 photo and (H, W) uint8 label in the bank's class ids,
    and the (H, W) int32 instance map (0 = no instance) when it was asked for."""

    image: np.ndarray
    label: np.ndarray
    ref: SampleRef
    source_file: str
    label_file: str
    instances: np.ndarray | None = None


class DatasetReader:
    """Base class: subclasses set ``name``, ``classes``, ``default_splits`` and find pairs.

    A reader maps its dataset's raw label values to bank class ids ``0..C-1`` and 255
    (unlabelled) through ``lut``; any raw value the lut does not know is an error, naming
    the file, rather than a silent relabelling.
    """

    name: ClassVar[str]
    classes: ClassTable
    default_splits: ClassVar[tuple[str, ...]]
    #: Raw label value -> bank id (0..C-1 or 255); -1 marks values that must not occur.
    lut: np.ndarray
    #: Bank class ids of the thing classes its instance maps cut per instance (none: no instance maps).
    thing_classes: ClassVar[tuple[int, ...]] = ()

    def __init__(
        self, root: str | Path, splits: Sequence[str] | None = None, sequences: SequenceFilter | None = None
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: dataset directory {self.root} does not exist")
        self.splits = tuple(splits) if splits else self.default_splits
        self.sequences = sequences or SequenceFilter()
        self._refs = self.find_pairs()
        if not self._refs:
            raise DatasetError(
                f"{self.name}: no image/label pairs found under {self.root} for splits {list(self.splits)}"
            )
        if self.sequences:
            found = len(self._refs)
            keep = self.sequences.apply(self.name, (r.relative_to(self.root)[0] for r in self._refs))
            self._refs = [r for r, k in zip(self._refs, keep, strict=True) if k]
            if not self._refs:
                raise DatasetError(
                    f"{self.name}: none of the {found} images of splits {list(self.splits)} is left "
                    f"by the sequence filter ({self.sequences.describe()})"
                )

    # Subclasses implement this one method.
    def find_pairs(self) -> list[SampleRef]:
        """Every (image, label) pair of the selected splits, in a stable order."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._refs)

    def __iter__(self) -> Iterator[Sample]:
        for ref in self._refs:
            yield self.load(ref)

    @property
    def refs(self) -> list[SampleRef]:
        return list(self._refs)

    def shard(self, nshards: int, rank: int) -> list[SampleRef]:
        """Contiguous shard ``rank`` of ``nshards`` of the sample refs."""
        if not 0 <= rank < nshards:
            raise ValueError(f"rank {rank} outside 0..{nshards - 1}")
        bounds = np.linspace(0, len(self._refs), nshards + 1).astype(int)
        return self._refs[bounds[rank] : bounds[rank + 1]]

    def load(self, ref: SampleRef, instances: bool = False) -> Sample:
        """Decode one pair and map its labels to bank class ids; with ``instances``, its instance map too."""
        image = read_photo(ref.image_path)
        label = self.map_label(read_label(ref.label_path), ref.label_path)
        source, label_file = ref.relative_to(self.root)
        return Sample(image, label, ref, source, label_file, self.load_instances(ref) if instances else None)

    # Readers of datasets that ship instance maps override these two.
    def instance_path(self, ref: SampleRef) -> Path | None:
        """Where the instance map of ``ref`` lives by the dataset's layout (None: the dataset has none)."""
        return None

    def map_instances(self, raw: np.ndarray) -> np.ndarray:
        """The dataset's instance PNG values as (H, W) int32 instance ids, 0 = no instance."""
        return raw.astype(np.int32)

    @property
    def has_instances(self) -> bool:
        """Whether this dataset ships instance maps (its first sample has one): ``--instances auto``."""
        path = self.instance_path(self._refs[0]) if self.thing_classes else None
        return path is not None and path.is_file()

    def load_instances(self, ref: SampleRef) -> np.ndarray:
        """The instance map of ``ref``; a :class:`DatasetError` naming the file if it is missing."""
        path = self.instance_path(ref)
        if path is None:
            raise DatasetError(f"{self.name}: this dataset has no instance maps")
        if not path.is_file():
            raise DatasetError(f"{path}: instance map missing (needed by --instances things)")
        return self.map_instances(read_label(path))

    @property
    def unlabelled_ids(self) -> tuple[int, ...]:
        """Raw label values that mean unlabelled and are not class ids (CamVid's 11); the manifest records them."""
        values = np.flatnonzero(self.lut == IGNORE)
        return tuple(int(v) for v in values if len(self.classes) <= v < IGNORE)

    def map_label(self, raw: np.ndarray, path: Path | str = "label map") -> np.ndarray:
        """Apply ``lut``; raise :class:`DatasetError` on values outside the class table."""
        if raw.size and (raw.min() < 0 or raw.max() >= len(self.lut)):
            raise DatasetError(f"{path}: label values {raw.min()}..{raw.max()} outside 0..{len(self.lut) - 1}")
        mapped = self.lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0])
            raise DatasetError(
                f"{path}: label ids {bad[:8].tolist()} are not in the {self.name} class table "
                f"({len(self.classes)} classes)"
            )
        return mapped.astype(np.uint8)


def identity_lut(num_classes: int, ignore: Sequence[int] = (IGNORE,), size: int = 256) -> np.ndarray:
    """A lut that keeps ids ``0..num_classes-1``, maps ``ignore`` values to 255 and refuses the rest."""
    lut = np.full(size, -1, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    for v in ignore:
        lut[v] = IGNORE
    return lut


def paired_files(
    image_dir: Path,
    label_dir: Path,
    split: str,
    images: str | Callable[[Path], Iterable[Path]],
    label_name: Callable[[Path], Path],
) -> list[SampleRef]:
    """Pair every image with ``label_dir / label_name(image_rel_path)``.

    ``images`` is a glob pattern in ``image_dir``, or a function listing the images of ``image_dir`` (and
    refusing what it must). Raises :class:`DatasetError` if an image has no label, naming the first few.
    """
    if not image_dir.is_dir():
        raise DatasetError(f"missing directory {image_dir} (split {split!r})")
    if not label_dir.is_dir():
        raise DatasetError(f"missing label directory {label_dir} (split {split!r})")
    refs, missing = [], []
    for img in sorted(image_dir.glob(images)) if isinstance(images, str) else images(image_dir):
        lab = label_dir / label_name(img.relative_to(image_dir))
        if lab.is_file():
            refs.append(SampleRef(img, lab, split))
        else:
            missing.append(str(lab))
    if missing:
        raise DatasetError(f"{len(missing)} images have no label map, e.g. {missing[:3]}")
    return refs
