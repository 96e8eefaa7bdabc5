"""FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): CE + weight · MSE(regressor(s), t).

The regressor (a 1x1 convolution + BatchNorm for feature maps, a linear layer for vectors) maps
the student's hint layer to the teacher's width; it trains with the student.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from kdistill.errors import KdistillError
from kdistill.losses import fitnet_loss
from kdistill.methods.base import register
from kdistill.methods.tapped import TappedMethod, TappedParams


class FitNetParams(TappedParams):
    weight: float = Field(100.0, ge=0)


@register
class FitNet(TappedMethod):
    name = "fitnet"
    Params = FitNetParams
    kind = "feature"
    term = "hint"

    def connect(self, shapes: list[tuple[torch.Size, torch.Size]]) -> None:
        regressors = []
        for (s_shape, t_shape), (s_name, t_name) in zip(shapes, self.pairs):
            s, t = tuple(s_shape), tuple(t_shape)
            if len(s) == 4 and len(t) == 4:
                regressors.append(nn.Sequential(nn.Conv2d(s[1], t[1], kernel_size=1, bias=False), nn.BatchNorm2d(t[1])))
            elif len(s) == 2 and len(t) == 2:
                regressors.append(nn.Linear(s[1], t[1]))
            else:
                raise KdistillError(
                    f"distill (fitnet): cannot connect student {s_name!r} output {s[1:]} to teacher {t_name!r} output "
                    f"{t[1:]}; tap two feature maps (B, C, H, W) or two vectors (B, D)")
        self.regressors = nn.ModuleList(regressors)

    def distance(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor, pair: int) -> torch.Tensor:
        return fitnet_loss(self.regressors[pair](student_feature), teacher_feature)
