"""The paper's image-denoising EBT (the official job_scripts/img/pretrain_denoising/ebt_s1.sh).

"large" size (24 layers, width 1536, 16 heads, mlp_ratio 1 from --ffn_dim_multiplier 1) on
128 x 128 images in patches of 16, one thinking step with a learnable step size (3000, its
learning rate x9000), noise level 0.1 of a 100-step linear-beta diffusion, AdamW at 1e-4
(weight decay 0.01) with 10k warmup steps and cosine decay over 1M scheduled steps, 100k
steps, batch 128 (the script's per-device batch: multiply by your device count to match
its global batch). Evaluation thinks for 2 steps (the inference script's
--infer_ebt_num_steps 2) at noise levels 0.1 and 0.2 (out of distribution). The official
data set is COCO ("coco_medium"); point data.path at a folder of its images (read into
memory; for sets that do not fit, save a [N, 128, 128, 3] uint8 .npy and use
data.source=image_npy, which is memory-mapped):

    ebt train --config configs/denoise_paper.py --workdir runs/denoise_paper \\
        --config.data.path=coco/train2017
    ebt train --config configs/dit_paper.py --workdir runs/dit_paper --config.data.path=coco/train2017
    ebt eval --workdir runs/denoise_paper --baseline runs/dit_paper --thinking-steps 1,2,3

Expected run time: 3.4e13 model FLOPs per step (`ebt_jax.training.flops`: 6x the forward
pass per thinking step), so about 0.17 s per step on one H100 at 40% MFU in float32
(TF32), about 5 hours for 100k steps at batch 128; an estimate from the FLOP count, not
yet a measurement.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "image_ebt"
  c.model.image_size = 128
  c.model.patch_size = 16
  c.model.image_channels = 3
  c.model.dim = 1536
  c.model.n_layers = 24
  c.model.n_heads = 16
  c.model.ffn_dim_multiplier = 1.0
  c.thinking.num_steps = 1
  c.thinking.step_size = 3000.0
  c.thinking.step_size_learnable = True
  c.thinking.step_size_lr_multiplier = 9000.0
  c.inference.thinking_steps = 2
  c.denoise.diffusion_steps = 100
  c.denoise.noise_level = 0.1
  c.denoise.ood_noise_level = 0.2
  c.data.source = "image_folder"
  c.data.validation_fraction = 0.01
  c.optimizer.peak_lr = 1e-4
  c.optimizer.weight_decay = 0.01
  c.optimizer.min_lr_scale = 10.0
  c.optimizer.warmup_steps = 10000
  c.optimizer.decay_steps = 1000000
  c.optimizer.grad_clip = 1.0
  c.train.batch_size = 128
  c.train.num_steps = 100000
  c.train.log_every = 20
  c.train.eval_every = 5000
  c.train.eval_batches = 8
  c.train.checkpoint_every = 5000
  return c
