"""Where a training batch's teacher logits come from: the live frozen teacher, the teacher cache, or nowhere.

The engine asks one object, whatever the source: `draw(batch, generator)` on the global batch (the
augmentation every process draws alike, or the cache's stored view and logits), then `logits(inputs,
drawn)` on this process's slice, on its device (the live teacher runs here, under the student's autocast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from kdistill.data.splits import Batch
from kdistill.training.teachers import FrozenTeacher

if TYPE_CHECKING:
    from kdistill.data.augment import Augmenter
    from kdistill.training.teacher_cache import TeacherCache


class TeacherSource:
    """Live (a FrozenTeacher the method needs), cached (a TeacherCache: views and logits) or none."""

    def __init__(self, teacher: FrozenTeacher | None, cache: "TeacherCache | None",
                 augment: "Augmenter | None", needs_teacher: bool):
        if needs_teacher and teacher is None and cache is None:
            raise ValueError("the method needs a teacher")
        self.cache = cache
        self.augment = augment
        self.live = teacher if cache is None and needs_teacher else None
        # Training samples per image of a drawn batch: a cache may show each image in several stored views.
        self.views_per_image = cache.views_per_image if cache is not None else 1

    def draw(self, batch: Batch, generator: torch.Generator) -> tuple[Batch, torch.Tensor | None]:
        """The global batch as the student sees it (augmented, or a cached view) and its cached logits, if any."""
        if self.cache is not None:
            return self.cache.targets(batch, generator)
        if self.augment is not None:
            batch = self.augment.augment_batch(batch, generator)
        return batch, None

    def image_rows(self, n: int, shard: Callable[[int], slice]) -> slice:
        """The rows of a batch of n images that this process's slice (`shard` of the drawn batch) is made from:
        all of them when a live mix pairs images across the batch."""
        if self.cache is None and self.augment is not None and self.augment.mix is not None:
            return slice(0, n)
        k = self.views_per_image  # drawn row j shows image j // k
        part = shard(n * k)
        return slice(part.start // k, -(-part.stop // k))

    def logits(self, inputs: torch.Tensor, drawn: torch.Tensor | None) -> torch.Tensor | None:
        """The teacher's logits for this process's `inputs`: the cached ones, the live teacher's, or None."""
        if self.live is None:
            return drawn
        return self.live(inputs)
