"""The paper's DiT denoising baseline (the official job_scripts/img/pretrain_denoising/dit.sh).

The same transformer, images and noise as configs/denoise_paper.py ("large": 24 layers,
width 1536, 16 heads, mlp_ratio 1; 128 x 128 images in patches of 16; noise level 0.1 of
100 diffusion steps), trained with the official hybrid loss (epsilon MSE plus the learned
variance's bound, `create_diffusion(learn_sigma=True)`), AdamW at 1e-4 without weight
decay, 10k warmup steps, cosine decay over 1M scheduled steps, 100k steps, batch 128 per
device. Denoising is deterministic DDIM (--use_deterministic_reverse); evaluation reports
PSNR at 1, 2, 5, 10 and all 100 DDIM steps (network evaluations) at levels 0.1 and 0.2.
The official out-of-distribution inference script also re-runs DDIM on its own output
twice: add --config.inference.recurse_diffusion=2 to `ebt eval`.

    ebt train --config configs/dit_paper.py --workdir runs/dit_paper --config.data.path=coco/train2017

Expected run time: 1.7e13 model FLOPs per step (`ebt_jax.training.flops`: 3x the forward
pass), so about 0.09 s per step on one H100 at 40% MFU in float32 (TF32), about 2.5
hours for 100k steps at batch 128; an estimate from the FLOP count, not yet a measurement.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "dit"
  c.model.image_size = 128
  c.model.patch_size = 16
  c.model.image_channels = 3
  c.model.learn_sigma = True
  c.model.dim = 1536
  c.model.n_layers = 24
  c.model.n_heads = 16
  c.model.ffn_dim_multiplier = 1.0
  c.denoise.diffusion_steps = 100
  c.denoise.noise_level = 0.1
  c.denoise.ood_noise_level = 0.2
  c.inference.ddim_steps = (1, 2, 5, 10, 100)
  c.data.source = "image_folder"
  c.data.validation_fraction = 0.01
  c.optimizer.peak_lr = 1e-4
  c.optimizer.weight_decay = 0.0
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
