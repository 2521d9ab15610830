"""Training: configs, losses, pluggable batch preparation, the resumable (DDP-ready) loop, shipped checkpoints."""

from robustir.train.batch import (Batch, BatchPrep, PrepContext, build_batch_prep, derive_seed, list_noise_samplers,
                                  list_steps, register_noise_sampler, register_step, sample_generator, select_samples)
from robustir.train.config import TrainConfig, config_from_dict, config_to_dict, dump_config, load_config
from robustir.train.losses import build_loss, charbonnier_loss, l1_loss, l2_loss, psnr_loss
from robustir.train.schedule import lr_at

__all__ = ["Batch", "BatchPrep", "PrepContext", "TrainConfig", "build_batch_prep", "build_loss", "charbonnier_loss",
           "config_from_dict", "config_to_dict", "derive_seed", "dump_config", "l1_loss", "l2_loss",
           "list_noise_samplers", "list_steps", "load_config", "lr_at", "psnr_loss", "register_noise_sampler",
           "register_step", "sample_generator", "select_samples"]
