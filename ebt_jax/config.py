"""Experiment configuration: the schema every `configs/*.py` file fills in, and its checks.

Configs are `ml_collections.ConfigDict`s (config-as-code; `ebt train --config F
--config.model.dim=512` overrides any field). `base_config()` holds every field with its
default; experiment files start from it and change what they need. `validate` turns a bad
value of the fields every kind shares into one line naming the field and what was
expected, before anything is built; each kind's own checks, and the frozen dims and
options its pure model code closes over, belong to its task (`ebt_jax.tasks.build` runs
both). This module imports no model code.

Field names follow the official code where one exists (its name in brackets below);
`ebt_jax.official_hparams.from_official_hparams` converts an official job script's flags.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from ebt_jax.errors import check
from ebt_jax.parallel.logical import DEFAULT_RULES

STEP_COUNTS = ("per_landscape", "final_landscape", "total")   # inference.step_count
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.kind = "ebt"                 # ebt | transformer (Transformer++ baseline) | image_ebt
                                       # (bidirectional denoiser) | dit (its baseline) |
                                       # latent_ebt (next frame); see ebt_jax/tasks/
  c.model.ebt_type = "time_embed"      # [ebt_type] default | time_embed | adaln | adaln_zero
  c.model.vocab_size = 256
  c.model.vocab_multiple = 1           # pad the vocabulary axis (tables, candidates, logits)
                                       # to a multiple of this so `mesh.tensor` splits it; the
                                       # padding is masked: never predicted, never embedded
  c.model.dim = 384                    # [embedding_dim]
  c.model.n_layers = 6                 # [num_transformer_blocks]
  c.model.n_heads = 6                  # [multiheaded_attention_heads]
  c.model.ffn_dim_multiplier = config_dict.placeholder(float)  # FFN width dim * this; None = dim
  c.model.context_length = 256         # [context_length]
  c.model.norm_eps = 1e-5
  c.model.rope_theta = 10000.0
  c.model.weight_init = "xavier"       # [weight_initialization_method] xavier | he
  c.model.weight_init_gain = 1.0       # [weight_initialization_gain]
  c.model.tied_v2e = False             # [vocab_to_embed_uses_prob_dist]
  c.model.dtype = "float32"            # activation dtype; parameters stay float32
  c.model.wide_candidate_embedding = True  # text EBTs: candidate probs @ W_v2e in float32
                                       # under bfloat16 (False: in model.dtype, 9% less time on a
                                       # GPU, the candidate gradient rounded; docs/benchmarks.md)
  c.model.scan_layers = True           # one lax.scan over layers; False unrolls them: on a
                                       # GPU faster and half the memory, for ~2.5x the compile
                                       # time (docs/benchmarks.md, "Levers")
  c.model.remat = "none"               # per transformer block: none | full | dots
  c.model.attention = "dense"          # dense | blockwise (online softmax over key blocks:
                                       # temporaries linear in context; models/attention.py)
  c.model.attention_block = 512        # blockwise: queries and keys per block
  # Images (image_ebt, dit) and frame latents (latent_ebt). ffn_dim_multiplier is the DiT
  # blocks' mlp_ratio (None: 1, as the official denoising scripts' --ffn_dim_multiplier 1).
  c.model.image_size = 32              # [image_dims] square images, pixels per side
  c.model.patch_size = 4               # [patch_size] (the scripts: 16 at 128 px)
  c.model.image_channels = 3
  c.model.learn_sigma = True           # DiT: also predict the variance (create_diffusion's default)
  c.model.latent_dim = 64              # latent_ebt: width of a frame latent ([backbone_type]
                                       # vae: 3136, the SD VAE at 224 px; dinov2: model.dim)

  c.thinking = ml_collections.ConfigDict()
  c.thinking.num_steps = 2             # [mcmc_num_steps] steps; landscapes for time_embed/adaln
  c.thinking.step_size = 500.0         # [mcmc_step_size] initial alpha
  c.thinking.step_size_learnable = True          # [mcmc_step_size_learnable]
  c.thinking.step_size_lr_multiplier = 1500.0    # [mcmc_step_size_lr_multiplier]
  c.thinking.normalize_initial_condition = True  # [normalize_initial_condition] softmax candidate
  c.thinking.grad_wrt = "probs"        # probs (official) | logits (the paper's listing)
  c.thinking.initial_condition = "random_noise"  # [denoising_initial_condition] | zeros
                                       # (| most_recent_embedding for latent_ebt; image_ebt
                                       # always starts from the noisy image)
  c.thinking.initial_noise_scale = 1.0           # [gaussian_random_noise_scaling]
  c.thinking.detach = True             # not [no_mcmc_detach]
  c.thinking.truncate = False          # [truncate_mcmc]
  c.thinking.langevin_noise = 0.0      # [langevin_dynamics_noise] std added before each step,
                                       # in validation too (the official NLP model keeps it)
  c.thinking.langevin_noise_learnable = False  # [langevin_dynamics_noise_learnable] the std is
                                       # trained (default group) once warmup has finished
  c.thinking.no_langevin_during_eval = False  # [no_langevin_during_eval] image and video
                                       # EBTs: no noise in validation and evaluation
  # System 2 recipe (ebt_jax/tasks/text.py, tasks/replay.py). Validation draws none of
  # the random step sizes/counts and no replay; it runs the official deterministic steps.
  c.thinking.step_size_random_scale = 1.0  # [randomize_mcmc_step_size_scale] s: training's alpha
                                       # ~ U[alpha/s, alpha*s] per (sample, position)
  c.thinking.random_steps = 0          # [randomize_mcmc_num_steps] R: each landscape's step is
                                       # repeated randint(min, R+2) times per training batch;
                                       # validation repeats the final landscape's R+1 times
  c.thinking.random_steps_min = 0      # [randomize_mcmc_num_steps_min] min repeats; 0 means 1
  c.thinking.random_steps_final_landscape = False  # [randomize_mcmc_num_steps_final_landscape]
                                       # randomize only the final landscape's repeats
  c.thinking.clamp_grad = False        # [clamp_futures_grad] clamp the candidate's gradient
  c.thinking.clamp_grad_max_change = 9.0  # [clamp_futures_grad_max_change] to +-this / alpha
  c.thinking.clamp_grad_max_change_after_warmup = 0.0  # [clamp_max_after_warm_up] != 0: the
                                       # max change from the end of warmup on
  c.thinking.absolute_clamp = 0.0      # [absolute_clamp] != 0: candidates clamped to +-this
  # Text EBT options the paper's runs left off (ebt_jax/tasks/text.py).
  c.thinking.soften_target = 0.0       # [soften_target_prob_dist] v: step k of K trains against
                                       # targets label-smoothed by (K-1-k)/(K-1) * v
  c.thinking.sharpen = 0.0             # [sharpen_predicted_distribution] != 0: training's and
                                       # validation's candidate divided by this after each step
  c.thinking.normalize_first_step_only = False  # [normalize_initial_condition_only_first_step]
                                       # softmax the candidate only at official step 0
  c.thinking.reconstruction_coeff = 1.0   # [reconstruction_coeff] weight of the CE loss
  c.thinking.contrastive_loss = False  # [contrastive_loss] also push the true token's energy
                                       # below the final candidate's (IRED-style)
  c.thinking.contrastive_loss_coeff = 0.0005  # [contrastive_loss_coeff]
  c.thinking.contrastive_true_logit = 0.0     # [discrete_contrastive_loss_true_logit_val] 0:
                                       # the true candidate is one-hot; else logits +-this
  c.thinking.replay_buffer = False     # [mcmc_replay_buffer] (tasks/replay.py)
  c.thinking.replay_buffer_size = 192  # [mcmc_replay_buffer_size] sequences per buffer
  c.thinking.replay_buffer_sample_fraction = 0.5  # [mcmc_replay_buffer_sample_bs_percent]
                                       # replayed rows appended per buffer: int(fraction x
                                       # batch_size / replay_buffer_groups)
  c.thinking.replay_buffer_groups = 1  # independent buffers, each fed and sampled by its own
                                       # block of batch rows (official: one per GPU; set the
                                       # data-parallel device count so each stays on its device)
  c.thinking.unroll = True             # unroll training's thinking steps (see thinking/loop.py)
  c.thinking.remat = "none"            # per thinking step: none | full | dots
  c.thinking.inner_optimizer = "gd"
  c.thinking.inner_optimizer_kwargs = ml_collections.ConfigDict()

  c.optimizer = ml_collections.ConfigDict()   # AdamW as the paper; alpha in its own group
  c.optimizer.peak_lr = 1.2e-3         # [peak_learning_rate]
  c.optimizer.weight_decay = 0.01      # [weight_decay]
  c.optimizer.b1 = 0.9                 # [beta1]
  c.optimizer.b2 = 0.999               # [beta2]
  c.optimizer.eps = 1e-8
  c.optimizer.warmup_steps = 100       # [warm_up_steps] linear warmup
  c.optimizer.warmup_base_lr_divider = -1.0  # [warm_up_base_lr_divider] -1: warm up from 0
  c.optimizer.decay_steps = config_dict.placeholder(int)  # [max_scheduling_steps]; None: train.num_steps
  c.optimizer.min_lr_scale = 10.0      # [min_lr_scale] cosine floor = peak / this, per group
  c.optimizer.grad_clip = 1.0          # [gradient_clip_val] global norm

  # Image denoising noise (image_ebt, dit; ebt_jax/tasks/image.py).
  c.denoise = ml_collections.ConfigDict()
  c.denoise.diffusion_steps = 100      # [diffusion_steps] linear-beta schedule of
                                       # diffusion_steps / noise_level timesteps
  c.denoise.noise_level = 0.1          # [denoise_images_noise_level] training (validation) level
  c.denoise.randomize_noise_level = False  # [randomize_denoise_images_noise_level]
  c.denoise.ood_noise_level = 0.2      # out-of-distribution evaluation level (the inference
                                       # scripts' --denoise_images_noise_level 0.2)

  c.data = ml_collections.ConfigDict()
  c.data.source = "stdlib"             # text: stdlib | text | shards | dyck | arithmetic;
                                       # images: embedded_images | image_folder | image_npy;
                                       # frame latents: moving_digits | latent_npy
  c.data.path = ""                     # text: a directory or glob of .txt/.jsonl; shards: `ebt prepare` output
  c.data.tokenizer = "byte"            # "byte" or the path of a Hugging Face tokenizer.json
  c.data.validation_fraction = 0.05    # of the documents (files), held out by a stable hash
  c.data.jsonl_field = "text"
  c.data.seed = 0                      # window sampling and shuffling
  c.data.ood_suites = ()               # extra evaluation sets, e.g. ("dyck_depth_8",)
  c.data.dyck = ml_collections.ConfigDict()
  c.data.dyck.bracket_types = 3
  c.data.dyck.train_max_depth = 4
  c.data.dyck.num_documents = 20000
  c.data.arithmetic = ml_collections.ConfigDict()
  c.data.arithmetic.train_max_digits = 3
  c.data.arithmetic.num_documents = 20000
  c.data.embedded_kind = "mixed"       # embedded_images: photos | digits | mixed (scikit-learn's)
  c.data.max_zoom = 8.0                # embedded photos: crops up to image_size x this, resized
  c.data.moving_digits = ml_collections.ConfigDict()   # context_length + 1 frames per sequence
  c.data.moving_digits.canvas = 32     # frame side, pixels
  c.data.moving_digits.digit_size = 16
  c.data.moving_digits.num_digits = 2
  c.data.moving_digits.max_speed = 3.0   # pixels per frame
  c.data.moving_digits.project = True  # fixed random projection to model.latent_dim; False:
                                       # raw pixels (model.latent_dim = canvas^2)
  c.data.moving_digits.projection_seed = 0

  # System 2 thinking at evaluation and generation (ebt_jax/inference); `ebt eval`,
  # `ebt think` and `ebt generate` flags override these. [infer_*] are the official names.
  c.inference = ml_collections.ConfigDict()
  c.inference.thinking_steps = 0       # [infer_ebt_num_steps] N, counted as step_count says;
                                       # 0: the official fallback (infer_ebt_num_steps=1): a
                                       # default EBT thinking.num_steps steps, time_embed/adaln
                                       # max(1, random_steps_min) per landscape ('total':
                                       # the steps validation takes)
  c.inference.step_count = "per_landscape"  # text EBTs: per_landscape (official: N steps on every
                                       # landscape) | final_landscape ([infer_steps_final_landscape]:
                                       # one on each earlier landscape, N on the final one) |
                                       # total (N steps in all, the extras on the final one)
  c.inference.step_size_final_landscape = False  # [infer_alpha_final_landscape] step_size and
                                       # step_size_scale only on the final landscape
  c.inference.best_of = 1              # [infer_generated_samples] candidates per position
  c.inference.select = "min"           # [infer_energy_sampling_technique] min | max | max_gap
  c.inference.initial_noise_scale = -1.0  # initial candidates' noise; -1: thinking's
  c.inference.step_size = 0.0          # > 0 replaces alpha ([infer_ebt_override_alpha] >= 1)
  c.inference.step_size_scale = 1.0    # multiplies alpha ([infer_ebt_override_alpha] in (0, 1))
  c.inference.langevin_noise = -1.0    # [infer_langevin_dynamics_noise] std before each step;
                                       # -1: the trained std (official), 0: none
  c.inference.langevin_first_step_only = False   # [infer_langevin_first_step]
  c.inference.accept_lower = False     # [infer_accept_lower_energies], per position
  c.inference.stop_on = "none"         # adaptive compute: none | energy | grad_norm
  c.inference.stop_threshold = 0.0     # stop a position once the change/norm is below this
  c.inference.ddim_steps = ()          # DiT: DDIM step counts (network evaluations) to evaluate;
                                       # empty: every timestep (the official loop)
  c.inference.recurse_diffusion = 0    # [infer_recurse_diffusion_n_times] DiT: re-run DDIM on
                                       # its own output this many more times
  c.inference.clip_denoised = True     # DiT: clip each x_0 prediction to [-1, 1] (official)
  c.inference.increase_steps = 0       # [infer_increase_steps] DiT: != 0 starts DDIM from this
                                       # timestep, not the one the images are noised to
  c.inference.video_condition_frames = 3   # [infer_video_condition_frames] latent EBT: `ebt
                                       # eval`'s rollout conditions on this many true frames

  c.mesh = ml_collections.ConfigDict()   # device mesh (ebt_jax/parallel); -1 takes the rest
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = DEFAULT_RULES         # logical axis name -> mesh axes (parallel/logical.py)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256             # global batch (sequences)
  c.train.num_steps = 1000             # [max_steps]
  c.train.log_every = 10
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.peak_tflops = config_dict.placeholder(float)  # per device, for MFU where not in the table
  c.train.tensorboard = True           # also write TensorBoard events when tensorboardX is installed
  return c


def parse_scalar(text: str):
  """`text` as an int, else a float, else the text itself: how a comma-separated override
  item (`--config.x=a,2,0.5`) and an official job script's flag value are read."""
  for parse in (int, float):
    try:
      return parse(text)
    except ValueError:
      pass
  return text


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks the fields every kind shares; returns `c` so calls can be chained."""
  m = c.model
  for field in ("vocab_size", "vocab_multiple", "dim", "n_layers", "n_heads", "context_length"):
    value = m[field]
    check(isinstance(value, int) and value >= 1, f"model.{field}", "a positive integer", value)
  check(m.vocab_size >= 2, "model.vocab_size", "at least 2", m.vocab_size)
  check(m.dim % m.n_heads == 0, "model.n_heads",
         f"a divisor of model.dim={m.dim}", m.n_heads)
  check(m.ffn_dim_multiplier is None or m.ffn_dim_multiplier > 0,
         "model.ffn_dim_multiplier", "None or a positive number", m.ffn_dim_multiplier)
  check(m.weight_init in ("xavier", "he"), "model.weight_init", "'xavier' or 'he'", m.weight_init)
  check(m.dtype in DTYPES, "model.dtype", f"one of {tuple(DTYPES)}", m.dtype)
  check(m.norm_eps > 0, "model.norm_eps", "a positive number", m.norm_eps)
  check(m.attention in ("dense", "blockwise"), "model.attention", "'dense' or 'blockwise'",
        m.attention)
  check(isinstance(m.attention_block, int) and m.attention_block >= 1, "model.attention_block",
        "a positive integer", m.attention_block)

  t = c.thinking
  check(isinstance(t.num_steps, int) and t.num_steps >= 1, "thinking.num_steps",
         "a positive integer", t.num_steps)
  check(t.step_size > 0, "thinking.step_size", "a positive number", t.step_size)
  check(t.grad_wrt in ("probs", "logits"), "thinking.grad_wrt", "'probs' or 'logits'", t.grad_wrt)
  check(t.initial_noise_scale >= 0, "thinking.initial_noise_scale", "a number >= 0",
         t.initial_noise_scale)
  check(t.langevin_noise >= 0, "thinking.langevin_noise", "a number >= 0", t.langevin_noise)
  check(t.step_size_random_scale > 0, "thinking.step_size_random_scale", "a positive number",
         t.step_size_random_scale)
  check(isinstance(t.random_steps, int) and t.random_steps >= 0, "thinking.random_steps",
         "an integer >= 0", t.random_steps)
  check(isinstance(t.random_steps_min, int) and 0 <= t.random_steps_min <= t.random_steps + 1,
         "thinking.random_steps_min",
         f"an integer in [0, random_steps + 1 = {t.random_steps + 1}]", t.random_steps_min)
  check(t.clamp_grad_max_change > 0, "thinking.clamp_grad_max_change", "a positive number",
         t.clamp_grad_max_change)
  check(t.clamp_grad_max_change_after_warmup >= 0, "thinking.clamp_grad_max_change_after_warmup",
         "a number >= 0", t.clamp_grad_max_change_after_warmup)
  check(t.absolute_clamp >= 0, "thinking.absolute_clamp", "a number >= 0 (0: off)",
         t.absolute_clamp)
  check(0 <= t.soften_target <= 1, "thinking.soften_target", "a number in [0, 1] (0: off)",
         t.soften_target)
  check(t.sharpen >= 0, "thinking.sharpen", "a number >= 0 (0: off)", t.sharpen)

  i = c.inference
  check(isinstance(i.thinking_steps, int) and i.thinking_steps >= 0, "inference.thinking_steps",
         "an integer >= 0 (0: thinking.num_steps)", i.thinking_steps)
  check(isinstance(i.best_of, int) and i.best_of >= 1, "inference.best_of",
         "a positive integer", i.best_of)
  check(i.select in ("min", "max", "max_gap"), "inference.select", "'min', 'max' or 'max_gap'",
         i.select)
  check(i.initial_noise_scale == -1 or i.initial_noise_scale >= 0, "inference.initial_noise_scale",
         "-1 (thinking's) or a number >= 0", i.initial_noise_scale)
  check(i.step_size >= 0, "inference.step_size", "0 (keep alpha) or a positive number", i.step_size)
  check(i.step_size_scale > 0, "inference.step_size_scale", "a positive number", i.step_size_scale)
  check(i.langevin_noise == -1 or i.langevin_noise >= 0, "inference.langevin_noise",
         "-1 (the trained std) or a number >= 0", i.langevin_noise)
  check(i.stop_on in ("none", "energy", "grad_norm"), "inference.stop_on",
         "'none', 'energy' or 'grad_norm'", i.stop_on)
  check(i.stop_threshold >= 0, "inference.stop_threshold", "a number >= 0", i.stop_threshold)
  check(i.step_count in STEP_COUNTS, "inference.step_count", f"one of {STEP_COUNTS}",
         i.step_count)

  o = c.optimizer
  for field in ("peak_lr", "min_lr_scale"):
    check(o[field] > 0, f"optimizer.{field}", "a positive number", o[field])
  for field in ("weight_decay", "grad_clip"):
    check(o[field] >= 0, f"optimizer.{field}", "a number >= 0", o[field])
  for field in ("b1", "b2"):
    check(0 <= o[field] < 1, f"optimizer.{field}", "a number in [0, 1)", o[field])
  check(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "optimizer.warmup_steps",
         "an integer >= 0", o.warmup_steps)
  check(o.warmup_base_lr_divider == -1 or o.warmup_base_lr_divider >= 1,
         "optimizer.warmup_base_lr_divider", "-1 (warm up from 0) or a number >= 1",
         o.warmup_base_lr_divider)
  check(o.decay_steps is None or o.decay_steps > o.warmup_steps, "optimizer.decay_steps",
         f"None or more than optimizer.warmup_steps={o.warmup_steps}", o.decay_steps)

  tr = c.train
  for field in ("batch_size", "num_steps", "log_every", "eval_every", "eval_batches",
                "checkpoint_every", "keep_checkpoints"):
    check(isinstance(tr[field], int) and tr[field] >= 1, f"train.{field}",
           "a positive integer", tr[field])
  return c
