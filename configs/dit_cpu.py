"""The DiT denoising baseline beside configs/denoise_cpu.py, sized for a 2-core CPU.

    ebt train --config configs/dit_cpu.py --workdir runs/dit_cpu
    ebt eval --workdir runs/denoise_cpu --baseline runs/dit_cpu

About 45 s on a 2-core CPU (measured: 44 s for 2000 steps at batch 32). The same images,
noise and transformer as denoise_cpu.py (16 x 16 crops, patches of 4, 2 layers of width
64); the DiT predicts the noise (and a variance: the official hybrid loss) at a timestep
drawn from the first 100 of the stretched schedule, and denoises by deterministic DDIM
from the noisy image's timestep. Its evaluation reports PSNR per DDIM step count (network
evaluations, NFE): 1, 2, 5, 10 and all 100. The official script's flags otherwise (weight
decay 0, deterministic DDIM); CPU-sized learning rate, warmup and size (the paper's:
configs/dit_paper.py).

Measured (256 validation images): PSNR 24.57 / 24.73 / 25.07 / 25.06 / 25.01 dB at 1 / 2 /
5 / 10 / 100 DDIM steps from 16.99 dB noisy; at level 0.2, 16.95 / 17.48 / 20.28 / 20.36 /
20.34 dB from 11.65 dB.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "dit"
  c.model.image_size = 16
  c.model.patch_size = 4
  c.model.image_channels = 3
  c.model.learn_sigma = True
  c.model.dim = 64
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.ffn_dim_multiplier = 1.0
  c.denoise.diffusion_steps = 100
  c.denoise.noise_level = 0.1
  c.denoise.ood_noise_level = 0.2
  c.inference.ddim_steps = (1, 2, 5, 10, 100)
  c.data.source = "embedded_images"
  c.data.embedded_kind = "mixed"
  c.data.validation_fraction = 0.2
  c.optimizer.peak_lr = 1e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 100
  c.train.batch_size = 32
  c.train.num_steps = 2000
  c.train.log_every = 20
  c.train.eval_every = 500
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  return c
