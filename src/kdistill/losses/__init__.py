"""Pure distillation loss functions: logits in, scalar tensor (batch mean) out."""

from kdistill.losses.logits import distillation_loss, kd_loss

__all__ = ["kd_loss", "distillation_loss"]
