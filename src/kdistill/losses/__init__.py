"""Pure distillation loss functions: logits or features in, scalar tensor (batch mean) out."""

from kdistill.losses.features import (at_loss, attention_map, fitnet_loss, nce_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss,
                                      sp_loss)
from kdistill.losses.logits import distillation_loss, dist_loss, dkd_loss, kd_loss, ls_kd_loss, standardize_logits

__all__ = ["kd_loss", "distillation_loss", "dkd_loss", "dist_loss", "ls_kd_loss", "standardize_logits",
           "fitnet_loss", "at_loss", "attention_map", "pkt_loss", "rkd_distance_loss", "rkd_angle_loss", "sp_loss", "nce_loss"]
