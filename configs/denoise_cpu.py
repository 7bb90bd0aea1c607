"""Image denoising with the bidirectional EBT, sized for a 2-core CPU (DiT baseline: dit_cpu.py).

    ebt train --config configs/denoise_cpu.py --workdir runs/denoise_cpu
    ebt train --config configs/dit_cpu.py --workdir runs/dit_cpu
    ebt eval --workdir runs/denoise_cpu --baseline runs/dit_cpu --thinking-steps 1,2,4

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
(the paper's: configs/denoise_paper.py).

Measured (256 validation images): PSNR 25.75 / 26.14 / 25.34 / 24.33 dB after thinking
steps 1-4 from 16.99 dB noisy; at the unseen level 0.2, 19.16 / 21.20 / 22.20 / 22.59 dB
from 11.65 dB. The DiT of dit_cpu.py reaches 25.07 and 20.36 dB at best (5-100 DDIM steps).
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "image_ebt"
  c.model.image_size = 16
  c.model.patch_size = 4
  c.model.image_channels = 3
  c.model.dim = 64
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.ffn_dim_multiplier = 1.0
  c.thinking.num_steps = 2
  c.thinking.step_size = 3000.0
  c.thinking.step_size_learnable = True
  c.thinking.step_size_lr_multiplier = 9000.0
  c.inference.thinking_steps = 4
  c.denoise.diffusion_steps = 100
  c.denoise.noise_level = 0.1
  c.denoise.ood_noise_level = 0.2
  c.data.source = "embedded_images"
  c.data.embedded_kind = "mixed"
  c.data.validation_fraction = 0.2
  c.optimizer.peak_lr = 1e-3
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 100
  c.train.batch_size = 32
  c.train.num_steps = 2000
  c.train.log_every = 20
  c.train.eval_every = 500
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  return c
