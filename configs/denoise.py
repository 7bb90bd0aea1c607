"""Image denoising with the bidirectional EBT; variants `cpu` (the default), `s2_cpu` and
`paper`.

Its DiT baseline is configs/dit.py, which takes the same variants and shares this file's
images, noise, transformer size, data and schedule (`TASK`, `TASK_SIZES`).

`cpu`: sized for a 2-core CPU; `s2_cpu`: the same with the official S2 recipe
(job_scripts/img/pretrain_denoising/ebt_s2.sh: random step counts and sizes, truncation).

    ebt train --config configs/denoise.py:cpu --workdir runs/denoise_cpu
    ebt train --config configs/dit.py:cpu --workdir runs/dit_cpu
    ebt eval --workdir runs/denoise_cpu --baseline runs/dit_cpu --thinking-steps 1,2,4
    ebt train --config configs/denoise.py:s2_cpu --workdir runs/denoise_s2_cpu

About 2 minutes on a 2-core CPU (measured: 1 min 48 s, 100 s of it training 2000 steps at
batch 32). 16 x 16 RGB crops of scikit-learn's bundled photos and digits (no download),
patches of 4 (16 tokens), a 2-layer adaLN DiT stack of width 64 (mlp_ratio 1, as the
official --ffn_dim_multiplier 1). Images are noised to the official
`denoise_images_noise_level` 0.1 of a 100-step linear-beta diffusion; the EBT starts
thinking from the noisy image and is trained on SmoothL1 to the clean one through its 2
thinking steps. Validation also runs at noise level 0.2 (`ood_noise_0.2`), which the model
never saw, and thinks for up to 4 steps. The official scripts' thinking flags otherwise
(learnable alpha 3000 with a x9000 learning rate, AdamW with weight decay 0.01); the
learning rate, warmup, size and 2 training steps (the script: 1) are CPU-sized choices
(the paper's: the `paper` variant).

Measured (256 validation images): PSNR 25.75 / 26.14 / 25.34 / 24.33 dB after thinking
steps 1-4 from 16.99 dB noisy; at the unseen level 0.2, 19.16 / 21.20 / 22.20 / 22.59 dB
from 11.65 dB. The DiT of configs/dit.py:cpu reaches 25.07 and 20.36 dB at best (5-100
DDIM steps).

`paper`: the paper's image-denoising EBT (the official
job_scripts/img/pretrain_denoising/ebt_s1.sh). "large" size (24 layers, width 1536, 16
heads, mlp_ratio 1 from --ffn_dim_multiplier 1) on 128 x 128 images in patches of 16, one
thinking step with a learnable step size (3000, its learning rate x9000), noise level 0.1
of a 100-step linear-beta diffusion, AdamW at 1e-4 (weight decay 0.01) with 10k warmup
steps and cosine decay over 1M scheduled steps, 100k steps, batch 128 (the script's
per-device batch: multiply by your device count to match its global batch). Evaluation
thinks for 2 steps (the inference script's --infer_ebt_num_steps 2) at noise levels 0.1
and 0.2 (out of distribution). The official data set is COCO ("coco_medium"); point
data.path at a folder of its images (read into memory; for sets that do not fit, save a
[N, 128, 128, 3] uint8 .npy and use data.source=image_npy, which is memory-mapped):

    ebt train --config configs/denoise.py:paper --workdir runs/denoise_paper \\
        --config.data.path=coco/train2017
    ebt train --config configs/dit.py:paper --workdir runs/dit_paper --config.data.path=coco/train2017
    ebt eval --workdir runs/denoise_paper --baseline runs/dit_paper --thinking-steps 1,2,3

Expected run time: 3.4e13 model FLOPs per step (`ebt_jax.training.flops`: 6x the forward
pass per thinking step), so about 0.17 s per step on one H100 at 40% MFU in float32
(TF32), about 5 hours for 100k steps at batch 128; an estimate from the FLOP count, not
yet a measurement.
"""

from ebt_jax.config import base_config
from ebt_jax.configs import choose, update

# The images, noise, transformer and schedule; the DiT baseline (configs/dit.py) shares them.
TASK = {
    "model.image_channels": 3,
    "model.ffn_dim_multiplier": 1.0,
    "denoise.diffusion_steps": 100,
    "denoise.noise_level": 0.1,
    "denoise.ood_noise_level": 0.2,
    "train.log_every": 20,
    "train.eval_batches": 8,
}
TASK_SIZES = {
    "cpu": {
        "model.image_size": 16,
        "model.patch_size": 4,
        "model.dim": 64,
        "model.n_layers": 2,
        "model.n_heads": 4,
        "data.source": "embedded_images",
        "data.embedded_kind": "mixed",
        "data.validation_fraction": 0.2,
        "optimizer.peak_lr": 1e-3,
        "optimizer.warmup_steps": 100,
        "train.batch_size": 32,
        "train.num_steps": 2000,
        "train.eval_every": 500,
        "train.checkpoint_every": 500,
    },
    "paper": {
        "model.image_size": 128,
        "model.patch_size": 16,
        "model.dim": 1536,
        "model.n_layers": 24,
        "model.n_heads": 16,
        "data.source": "image_folder",
        "data.validation_fraction": 0.01,
        "optimizer.peak_lr": 1e-4,
        "optimizer.min_lr_scale": 10.0,
        "optimizer.warmup_steps": 10000,
        "optimizer.decay_steps": 1000000,
        "optimizer.grad_clip": 1.0,
        "train.batch_size": 128,
        "train.num_steps": 100000,
        "train.eval_every": 5000,
        "train.checkpoint_every": 5000,
    },
}

# The EBT's own settings: the official scripts' thinking flags and weight decay.
EBT = {
    "model.kind": "image_ebt",
    "thinking.step_size": 3000.0,
    "thinking.step_size_learnable": True,
    "thinking.step_size_lr_multiplier": 9000.0,
    "optimizer.weight_decay": 0.01,
}
# The S2 recipe of the official job_scripts/img/pretrain_denoising/ebt_s2.sh: one step
# repeated randint(2, 4) times per batch (validation: 3), alpha x U[1/2, 2] per image,
# second order through the last step only, no detach between steps, and a fixed step size
# (the script passes --no_mcmc_detach and not --mcmc_step_size_learnable).
S2 = {
    "thinking.num_steps": 1,
    "thinking.truncate": True,
    "thinking.step_size_random_scale": 2.0,
    "thinking.random_steps": 2,
    "thinking.random_steps_min": 2,
    "thinking.langevin_noise": 0.0,
    "thinking.detach": False,
    "thinking.step_size_learnable": False,
}
VARIANTS = {
    "cpu": {"thinking.num_steps": 2, "inference.thinking_steps": 4},
    "s2_cpu": {**S2, "inference.thinking_steps": 4},
    "paper": {"thinking.num_steps": 1, "inference.thinking_steps": 2},
}
SIZE = {"cpu": "cpu", "s2_cpu": "cpu", "paper": "paper"}


def get_config(arg=None):
  variant = choose(arg, VARIANTS, default="cpu")
  return update(base_config(), TASK, TASK_SIZES[SIZE[variant]], EBT, VARIANTS[variant])
