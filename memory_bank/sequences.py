"""Sequences (drives, cities): the unit a fair evaluation holds out whole.

Frames of one drive are near-twins a second apart, so a split that holds out single frames
leaks: every held-out frame has a neighbour in the bank and in the training set. A held-out
*sequence* has none. The indexer filters a dataset by sequence (``sims index build
--exclude-sequences``), and ``sims eval`` checks its banks with the same rule.

A dataset's sequence is read from an image's file name (its path relative to the dataset root,
as the bank's ``source_file`` holds it). Datasets without a rule here have no sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from memory_bank.errors import DatasetError


def _stem_prefix(source_file: str) -> str:
    # CamVid "train/0006R0_f02370.png" -> "0006R0"; Cityscapes "leftImg8bit/train/aachen/aachen_..." -> "aachen".
    return PurePosixPath(source_file).name.split("_", 1)[0]


#: Dataset name -> function from an image's relative path to its sequence.
SEQUENCE_RULES: dict[str, Callable[[str], str]] = {
    "camvid": _stem_prefix,
    "cityscapes": _stem_prefix,
}


def sequence_of(dataset: str, source_file: str) -> str:
    """The sequence (drive, city) an image of ``dataset`` belongs to; DatasetError if it has none."""
    rule = SEQUENCE_RULES.get(dataset)
    if rule is None:
        raise DatasetError(
            f"{dataset}: images have no sequences to filter by (known for {', '.join(sorted(SEQUENCE_RULES))})"
        )
    return rule(source_file)


@dataclass(frozen=True)
class SequenceFilter:
    """Which sequences to keep: only ``include`` (if given), never ``exclude``.

    ``SequenceFilter(exclude=("0006R0",))`` is the bank and training side of the held-out-drive
    split; ``SequenceFilter(include=("0006R0",))`` is its evaluation side.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        both = set(self.include) & set(self.exclude)
        if both:
            raise DatasetError(f"sequences {sorted(both)} are both included and excluded")

    @classmethod
    def parse(cls, include: str | None = None, exclude: str | None = None) -> SequenceFilter:
        """From comma-separated lists, as the command line gives them."""

        def split(text: str | None) -> tuple[str, ...]:
            return tuple(s.strip() for s in (text or "").split(",") if s.strip())

        return cls(split(include), split(exclude))

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def keeps(self, sequence: str) -> bool:
        """Whether an image of ``sequence`` passes the filter."""
        return (not self.include or sequence in self.include) and sequence not in self.exclude

    def apply(self, dataset: str, source_files: Iterable[str]) -> list[bool]:
        """Per image (relative path), whether it passes; DatasetError if the dataset has no sequences."""
        return [self.keeps(sequence_of(dataset, f)) for f in source_files]

    def describe(self) -> str:
        parts = ([f"only {','.join(self.include)}"] if self.include else []) + (
            [f"without {','.join(self.exclude)}"] if self.exclude else []
        )
        return "; ".join(parts) or "all sequences"


def bank_sequences(dataset_names: Iterable[str], source_files: Iterable[str]) -> list[str]:
    """The sequence of every image of a bank, from its image table's ``dataset`` and ``source_file`` columns."""
    return [sequence_of(d, f) for d, f in zip(dataset_names, source_files, strict=True)]


def check_held_out(
    held_out: Iterable[str], *, layouts: Iterable[str] = (), memory: Iterable[str] = ()
) -> tuple[int, int]:
    """Check a held-out-sequence evaluation: every layout from ``held_out``, no memory image from it.

    ``layouts`` and ``memory`` are the sequences of the evaluated images and of the memory bank's
    images (:func:`bank_sequences`). Returns their counts; a :class:`DatasetError` names the leak.
    """
    held = set(held_out)
    layouts, memory = list(layouts), list(memory)
    outside = sorted(set(layouts) - held)
    if outside:
        raise DatasetError(f"evaluation layouts come from sequences {outside}, outside the held-out {sorted(held)}")
    leaked = sorted(set(memory) & held)
    if leaked:
        count = sum(s in held for s in memory)
        raise DatasetError(f"the memory bank holds {count} images of the held-out sequences {leaked}")
    return len(layouts), len(memory)
