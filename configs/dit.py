"""The DiT denoising baseline beside configs/denoise.py; variants `cpu` (the default) and `paper`.

Each variant takes the images, noise, transformer, data and schedule of the same variant
of configs/denoise.py (its `TASK` and `TASK_SIZES`) and differs from the EBT only in the
model and its weight decay. The DiT predicts the noise (and a variance: the official
hybrid loss, epsilon MSE plus the learned variance's bound,
`create_diffusion(learn_sigma=True)`) at a timestep drawn from the first 100 of the
stretched schedule, and denoises by deterministic DDIM (--use_deterministic_reverse) from
the noisy image's timestep. Its evaluation reports PSNR per DDIM step count (network
evaluations, NFE): 1, 2, 5, 10 and all 100, at noise levels 0.1 and 0.2. The official
script's flags otherwise (weight decay 0).

`cpu`: sized for a 2-core CPU.

    ebt train --config configs/dit.py:cpu --workdir runs/dit_cpu
    ebt eval --workdir runs/denoise_cpu --baseline runs/dit_cpu

About 45 s on a 2-core CPU (measured: 44 s for 2000 steps at batch 32). The same images,
noise and transformer as configs/denoise.py:cpu (16 x 16 crops, patches of 4, 2 layers of
width 64); CPU-sized learning rate, warmup and size (the paper's: the `paper` variant).

Measured (256 validation images): PSNR 24.57 / 24.73 / 25.07 / 25.06 / 25.01 dB at 1 / 2 /
5 / 10 / 100 DDIM steps from 16.99 dB noisy; at level 0.2, 16.95 / 17.48 / 20.28 / 20.36 /
20.34 dB from 11.65 dB.

`paper`: the paper's DiT denoising baseline (the official
job_scripts/img/pretrain_denoising/dit.sh). The same transformer, images and noise as
configs/denoise.py:paper ("large": 24 layers, width 1536, 16 heads, mlp_ratio 1; 128 x 128
images in patches of 16; noise level 0.1 of 100 diffusion steps), AdamW at 1e-4 without
weight decay, 10k warmup steps, cosine decay over 1M scheduled steps, 100k steps, batch
128 per device. The official out-of-distribution inference script also re-runs DDIM on
its own output twice: add --config.inference.recurse_diffusion=2 to `ebt eval`.

    ebt train --config configs/dit.py:paper --workdir runs/dit_paper --config.data.path=coco/train2017

Expected run time: 1.7e13 model FLOPs per step (`ebt_jax.training.flops`: 3x the forward
pass), so about 0.09 s per step on one H100 at 40% MFU in float32 (TF32), about 2.5
hours for 100k steps at batch 128; an estimate from the FLOP count, not yet a measurement.
"""

from ebt_jax.config import base_config
from ebt_jax.configs import choose, denoise, update

VARIANTS = tuple(denoise.TASK_SIZES)

DIT = {
    "model.kind": "dit",
    "model.learn_sigma": True,
    "inference.ddim_steps": (1, 2, 5, 10, 100),
    "optimizer.weight_decay": 0.0,
}


def get_config(arg=None):
  variant = choose(arg, VARIANTS, default="cpu")
  return update(base_config(), denoise.TASK, denoise.TASK_SIZES[variant], DIT)
