"""The paper's next-frame EBT on video latents (the official job_scripts/vid/pretrain/ebt_s1_vae.sh).

xxs size (6 layers, width 384, 6 heads), `time_embed`, 2 thinking steps with a learnable
step size (30000, its learning rate x90000), 16 context frames, random-noise initial
candidates, AdamW at 4e-4 (weight decay 0.01), 10k warmup steps, cosine decay over 1M
scheduled steps, 100k steps, batch 64 (the script's 16 per device x 4 accumulated
batches; multiply by your device count to match its global batch). The official frames
are Something-Something v2 clips at 224 x 224, 0.25 s apart, encoded by the Stable
Diffusion VAE (4 x 28 x 28 = 3136 numbers per frame, normalised): encode them yourself
and save a float [N, T >= 17, 3136] .npy (memory-mapped; each training example is a
random window of 17 consecutive frames):

    ebt train --config configs/nextframe_paper.py --workdir runs/nextframe_paper \\
        --config.data.path=ssv2_vae_latents.npy
    ebt eval --workdir runs/nextframe_paper --thinking-steps 1,2,4

Expected run time: 2.7e11 model FLOPs per step (`ebt_jax.training.flops`), so a small
model for one accelerator (a few ms per step on an H100 at any reasonable MFU, where
reading 64 x 17 x 3136 latents per step is the bigger cost); an estimate from the FLOP
count, not yet a measurement.
"""

from ebt_jax.config import base_config


def get_config():
  c = base_config()
  c.model.kind = "latent_ebt"
  c.model.ebt_type = "time_embed"
  c.model.latent_dim = 3136
  c.model.dim = 384
  c.model.n_layers = 6
  c.model.n_heads = 6
  c.model.context_length = 16
  c.thinking.num_steps = 2
  c.thinking.step_size = 30000.0
  c.thinking.step_size_learnable = True
  c.thinking.step_size_lr_multiplier = 90000.0
  c.thinking.initial_condition = "random_noise"
  c.data.source = "latent_npy"
  c.data.validation_fraction = 0.01
  c.optimizer.peak_lr = 4e-4
  c.optimizer.weight_decay = 0.01
  c.optimizer.min_lr_scale = 10.0
  c.optimizer.warmup_steps = 10000
  c.optimizer.decay_steps = 1000000
  c.optimizer.grad_clip = 1.0
  c.train.batch_size = 64
  c.train.num_steps = 100000
  c.train.log_every = 20
  c.train.eval_every = 5000
  c.train.eval_batches = 8
  c.train.checkpoint_every = 5000
  return c
