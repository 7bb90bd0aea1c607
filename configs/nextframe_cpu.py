"""Next-frame prediction with the autoregressive latent EBT, sized for a 2-core CPU.

    ebt train --config configs/nextframe_cpu.py --workdir runs/nextframe_cpu
    ebt eval --workdir runs/nextframe_cpu --thinking-steps 1,2,4

About 2 minutes on a 2-core CPU (measured: 2 min 16 s for 1000 steps at batch 32).
Moving digits (scikit-learn's bundled 8 x 8 digits, two per 32 x 32 frame, bouncing at up
to 3 pixels per frame; no download), 9 frames per sequence, each frame through a fixed
random projection to a 64-number latent (the stand-in for the official frozen VAE
encoder). A `time_embed` EBT of 4 layers and width 128 reads frames 0..7 and predicts the
latents of frames 1..8: each candidate starts as N(0, 1) noise and takes 2 thinking steps,
trained on SmoothL1 to the true next latent. The official
job_scripts/vid/pretrain/ebt_s1_vae.sh flags otherwise, except the step size: 100 with a
x300 learning rate here, where the script's 30000 (x90000) is for 3136-number VAE latents
(the paper's setup: configs/nextframe_paper.py).

Measured (256 validation sequences): SmoothL1 to the next latent 0.0696 after one thinking
step and 0.0592 after two (0.0592 after 4 and 8), against 0.0811 for copying the last
frame, which `ebt eval` prints beside.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "latent_ebt"
  c.model.ebt_type = "time_embed"
  c.model.latent_dim = 64
  c.model.dim = 128
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.context_length = 8
  c.thinking.num_steps = 2
  c.thinking.step_size = 100.0
  c.thinking.step_size_learnable = True
  c.thinking.step_size_lr_multiplier = 300.0
  c.inference.thinking_steps = 4
  c.data.source = "moving_digits"
  c.data.validation_fraction = 0.2
  c.data.moving_digits.canvas = 32
  c.data.moving_digits.digit_size = 16
  c.data.moving_digits.num_digits = 2
  c.data.moving_digits.max_speed = 3.0
  c.data.moving_digits.project = True
  c.optimizer.peak_lr = 1e-3
  c.optimizer.weight_decay = 0.01
  c.optimizer.warmup_steps = 100
  c.train.batch_size = 32
  c.train.num_steps = 1000
  c.train.log_every = 20
  c.train.eval_every = 250
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  return c
