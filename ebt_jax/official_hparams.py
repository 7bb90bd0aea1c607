"""The official code's flat hyperparameters (its `train_model.py` flags) -> a config.

Every official flag name falls in exactly one of four groups:

* mapped: converted to a config field (`_MAPPED`; the text EBT's advanced inference flags
  `_ADVANCED_INFERENCE` to `config.inference` when `infer_ebt_advanced` is on);
* plumbing: logging, wandb, dataloader workers, devices, data locations, debugging;
  accepted and ignored (`_PLUMBING`);
* other modalities / unused features: accepted while they hold the official default
  (or a value that changes nothing for a text model); any other value raises
  (`_MUST_BE_DEFAULT`), because a silently ignored value would train a different model;
* anything else raises as unknown.

The official `model_size` presets override the explicit width/depth/heads, and
`override_embedding_dim` / `override_transformer_blocks` override those, as in its
`train_model.py`. The replay buffer is kept per GPU there: `mcmc_replay_buffer_size` is
each buffer's size, and the config gets one buffer group per GPU. Each buffer's sample
count is int(fraction x its rows of one optimizer step), which with gradient
accumulation counts the accumulated micro-batches together (the official code samples
int(fraction x batch_size_per_device) per micro-batch: the same number unless rounding
differs).

Modalities: `modality`/`model_name` pick the kind (NLP: `ebt`, `transformer`; IMG with
`image_task=denoising`: `image_ebt`, `dit`; VID: `latent_ebt`); each modality's own flags
(`_MAPPED_BY_MODALITY`) take the place of the text checks. Text-to-image and the video
Transformer++ are refused in one line. A video EBT on DINOv2 features takes its width
from `vit_backbone_size`, as `train_model.py` sets it (its assert that `embedding_dim` is 0
there would stop the published dino scripts, whose `model_size` sets one; the intent is
kept). `to_official_hparams` is the inverse (for `ebt export-torch`), and
`parse_job_script` reads the flags of an official job script.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Callable

import ml_collections

from ebt_jax import config as config_lib
from ebt_jax import tasks
from ebt_jax.errors import ConfigError

# The official size presets (width, depth, heads) used by `--model_size`.
MODEL_SIZES = {
    "4xs": (128, 2, 2), "3xs": (256, 4, 4), "xxs": (384, 6, 6), "2xs": (384, 6, 6),
    "xs": (384, 12, 6), "small": (768, 12, 12), "medium": (1024, 24, 16),
    "large": (1536, 24, 16), "xl": (2048, 24, 32),
}

_PLUMBING = frozenset("""
run_name wandb_entity wandb_project wandb_tags wandb_offline wandb_watch wandb_watch_log_freq
no_wandb debug_log_filename console_log_filename print_logs log_model_archi log_gradients
log_every_n_steps log_image_every_n_steps num_workers prefetch_factor gpus distributed_strategy
is_slurm_run override_slurm_checks debug_mode fast_dev_run debug_dataloader profiler
create_model_viz detect_anomaly find_unused_parameters debug_unused_parameters
manual_gc_collect_every_n_steps debug_videos compile_model set_matmul_precision
resume_training_ckpt checkpoint_monitor_string checkpoint_monitor_mode save_top_k_ckpts
tokenizer pretokenize_dataset dataset_name dataset_dir validation_split_pct test_split_pct
limit_train_batches limit_val_batches limit_test_batches val_sanity val_check_interval
check_val_every_n_epoch no_shuffle no_randomness_dataloader is_random_seed deterministic
overfit_batches run_testing_after_training only_test only_test_model_ckpt metrics_list
metrics_average_type num_classes metrics_task infer_output_dir infer_max_gen_len infer_echo
infer_temp infer_topp infer_topk infer_logprobs infer_debug_sample_distances
infer_plot_energy_landscape ffprobe_path num_nodes total_num_workers txt_logger
vit_backbone_dim save_generation_logs_dir num_gpus
""".split())

# name -> the value(s) this project reproduces; other values cannot be honoured yet.
_MUST_BE_DEFAULT: dict[str, tuple] = {
    # Features of the official NLP EBT not implemented here yet.
    "ebt_norm": ("rms",),
    "ebt_act_func": ("silu",),
    "learnable_process_memory": (False,),
    "process_memory_type": (None,),
    "process_memory_linear_layer": (False,),
    "num_modality_processing_mlp_layers": (1,),
    "out_of_bounds_loss_coeff": (0, 0.0),
    "energy_loss_coeff": (0, 0.0),
    # inference: the official test run of a trained model (`ebt eval` of an imported run);
    # what it evaluates is in the infer_* flags.
    "execution_mode": ("pretrain", "inference"),
    "finetuning_model_ckpt": (None, ""),
    "optimizer": ("adamw",),
    "lr_scaling_rule": (False,),
    # Other modalities' flags: harmless at their defaults.
    "vit_backbone_size": ("base",), "backbone_type": ("dinov2",),
    "time_between_frames": (1, 1.0), "sampling_rate": (0, 0.0), "use_raw_framerate": (False,),
    "vae_normalization": (False,), "sdxl_vae_standardization": (False,),
    "weight_tie_vae_proj": (False,), "image_task": ("t2i",), "denoise_images_noise_level": (1, 1.0),
    "randomize_denoise_images_noise_level": (False,), "clip_text_encoder_size": ("base",),
    "patch_size": (8,), "image_dims": ([224, 224], (224, 224)), "preprocess_data": (False,),
    "crop_all_samples": (False,), "custom_image_normalization": (False,),
    "use_rand_caption": (False,), "diffusion_steps": (1000,), "use_deterministic_reverse": (False,),
    "infer_increase_steps": (0,), "infer_recurse_diffusion_n_times": (0,),
    "infer_video_condition_frames": (3,), "infer_generate_video": (False,),
    "mlp_dropout": (0, 0.0), "mlp_layer_norm": (False,), "mlp_dim_multiplier": (2, 2.0),
    "mlp_hidden_layers": (0,), "encoder_lr_divider": (100, 100.0),
    "lars_trust_coeff": (0.001,), "lars_exclude_bias_bn_wd": (False,),
}

# Flags whose value only matters together with a feature checked above (so any value is
# faithful while that feature is off), e.g. the replay buffer's size.
_ONLY_WITH_DISABLED_FEATURE = frozenset("""
dyt_alpha_init energy_loss_hinge energy_loss_fn embeddings_distance_fn
scale_cosine_sim_decay
""".split())

# The text EBT's advanced inference (`infer_ebt_advanced`, its `ebt_advanced_inference`):
# mapped to `config.inference` by `_advanced_inference` when that flag is on; without it
# the official code evaluates with its plain forward (validation's steps: this project's
# inference defaults), whatever these say.
_ADVANCED_INFERENCE = frozenset("""
infer_ebt_advanced infer_ebt_num_steps infer_ebt_override_alpha infer_generated_samples
infer_langevin_dynamics_noise infer_langevin_first_step infer_energy_sampling_technique
infer_accept_lower_energies infer_steps_final_landscape infer_alpha_final_landscape
""".split())

# Flags the official text EBT never reads (only its image models do), so any value
# trains the same text model: `no_langevin_during_eval` (the NLP model keeps Langevin
# noise in validation whatever it says).
_UNREAD_BY_TEXT_MODEL = frozenset({"no_langevin_during_eval"})


# (modality, official model_name) -> the config's model kind. Absent modality means NLP (text
# checkpoints and dicts always name it; the official argparse default is VID).
_KINDS = {("NLP", "ebt"): "ebt", ("NLP", "baseline_transformer"): "transformer",
          ("IMG", "ebt"): "image_ebt", ("IMG", "dit"): "dit", ("VID", "ebt"): "latent_ebt"}
_KIND_FLAGS = ("modality", "model_name", "image_task")


def _kind(hparams: dict) -> str:
  modality, name = hparams.get("modality", "NLP"), hparams.get("model_name", "ebt")
  if modality not in ("NLP", "IMG", "VID"):
    raise ConfigError(f"modality: expected 'NLP', 'IMG' or 'VID', got {modality!r}")
  if modality == "IMG" and hparams.get("image_task", "t2i") != "denoising":
    raise ConfigError(f"image_task: {hparams.get('image_task', 't2i')!r} (text-to-image, the "
                      f"official default) is not a task of this project yet; 'denoising' is")
  if (modality, name) not in _KINDS:
    known = sorted(n for m, n in _KINDS if m == modality)
    raise ConfigError(f"model_name: expected one of {known} for modality {modality!r} (the "
                      f"models this project has), got {name!r}")
  return _KINDS[modality, name]


def _initial_condition(value):
  if value not in ("random_noise", "zeros"):
    raise ConfigError(f"denoising_initial_condition: expected 'random_noise' or "
                                 f"'zeros' (what this project implements), got {value!r}")
  return value


def _precision(value):
  dtypes = {"32-true": "float32", "32": "float32", "bf16-mixed": "bfloat16",
            "16-mixed": "float16", "64-true": "float64"}
  if value not in dtypes:
    raise ConfigError(f"float_precision: expected one of {sorted(dtypes)}, got {value!r}")
  return dtypes[value]


_identity: Callable[[Any], Any] = lambda v: v

# official name -> (config path, converter); path None = checked only.
_MAPPED: dict[str, tuple[str | None, Callable]] = {
    "vocab_size": ("model.vocab_size", int),
    "embedding_dim": ("model.dim", int),
    "num_transformer_blocks": ("model.n_layers", int),
    "multiheaded_attention_heads": ("model.n_heads", int),
    "ffn_dim_multiplier": ("model.ffn_dim_multiplier", lambda v: None if v is None else float(v)),
    "context_length": ("model.context_length", int),
    "ebt_type": ("model.ebt_type", str),
    "weight_initialization_method": ("model.weight_init", str),
    "weight_initialization_gain": ("model.weight_init_gain", float),
    "vocab_to_embed_uses_prob_dist": ("model.tied_v2e", bool),
    "float_precision": ("model.dtype", _precision),
    "mcmc_num_steps": ("thinking.num_steps", int),
    "mcmc_step_size": ("thinking.step_size", float),
    "mcmc_step_size_learnable": ("thinking.step_size_learnable", bool),
    "mcmc_step_size_lr_multiplier": ("thinking.step_size_lr_multiplier", float),
    "normalize_initial_condition": ("thinking.normalize_initial_condition", bool),
    "denoising_initial_condition": ("thinking.initial_condition", _initial_condition),
    "gaussian_random_noise_scaling": ("thinking.initial_noise_scale", float),
    "truncate_mcmc": ("thinking.truncate", bool),
    "no_mcmc_detach": ("thinking.detach", lambda v: not v),
    "langevin_dynamics_noise": ("thinking.langevin_noise", float),
    "langevin_dynamics_noise_learnable": ("thinking.langevin_noise_learnable", bool),
    # System 2 training (see the `thinking` fields in ebt_jax/config.py).
    "randomize_mcmc_step_size_scale": ("thinking.step_size_random_scale", float),
    "randomize_mcmc_num_steps": ("thinking.random_steps", int),
    "randomize_mcmc_num_steps_min": ("thinking.random_steps_min", int),
    "randomize_mcmc_num_steps_final_landscape": ("thinking.random_steps_final_landscape", bool),
    "clamp_futures_grad": ("thinking.clamp_grad", bool),
    "clamp_futures_grad_max_change": ("thinking.clamp_grad_max_change", float),
    "clamp_max_after_warm_up": ("thinking.clamp_grad_max_change_after_warmup", float),
    "absolute_clamp": ("thinking.absolute_clamp", float),
    "reconstruction_coeff": ("thinking.reconstruction_coeff", float),
    "contrastive_loss": ("thinking.contrastive_loss", bool),
    "contrastive_loss_coeff": ("thinking.contrastive_loss_coeff", float),
    "discrete_contrastive_loss_true_logit_val": ("thinking.contrastive_true_logit", float),
    "mcmc_replay_buffer": ("thinking.replay_buffer", bool),
    "mcmc_replay_buffer_size": ("thinking.replay_buffer_size", int),
    "mcmc_replay_buffer_sample_bs_percent": ("thinking.replay_buffer_sample_fraction", float),
    "soften_target_prob_dist": ("thinking.soften_target", float),
    "sharpen_predicted_distribution": ("thinking.sharpen", float),
    "normalize_initial_condition_only_first_step": ("thinking.normalize_first_step_only", bool),
}


def _advanced_inference(c: ml_collections.ConfigDict, h: dict, kind: str) -> None:
  """The official advanced inference's flags -> `c.inference` (official defaults in `h`)."""
  if not h["infer_ebt_advanced"]:
    return
  if kind != "ebt":
    raise ConfigError(f"infer_ebt_advanced: the text EBT's advanced inference (this is a "
                      f"{kind} run)")
  i, n = c.inference, int(h["infer_ebt_num_steps"])
  if n < 1 and c.model.ebt_type != "default":
    raise ConfigError(f"infer_ebt_num_steps: expected a positive integer (the official code "
                      f"takes no steps on a landscape with {n}), got {n}")
  # 1 (the official default) and, for a default EBT, anything below 2 mean its fallback.
  i.thinking_steps = 0 if n <= 1 else n
  i.step_count = "final_landscape" if h["infer_steps_final_landscape"] else "per_landscape"
  i.step_size_final_landscape = bool(h["infer_alpha_final_landscape"])
  alpha = float(h["infer_ebt_override_alpha"])
  if alpha < 0:
    raise ConfigError(f"infer_ebt_override_alpha: expected a number >= 0, got {alpha}")
  if alpha >= 1:
    i.step_size = alpha
  elif alpha > 0:
    i.step_size_scale = alpha
  i.best_of = int(h["infer_generated_samples"])
  i.select = str(h["infer_energy_sampling_technique"])
  noise = float(h["infer_langevin_dynamics_noise"])
  i.langevin_noise = noise if noise != 0 else -1.0   # 0: the trained std
  i.langevin_first_step_only = bool(h["infer_langevin_first_step"])
  i.accept_lower = bool(h["infer_accept_lower_energies"])

_MAPPED_TRAIN: dict[str, tuple[str, Callable]] = {
    "peak_learning_rate": ("optimizer.peak_lr", float),
    "weight_decay": ("optimizer.weight_decay", float),
    "beta1": ("optimizer.b1", float),
    "beta2": ("optimizer.b2", float),
    "min_lr_scale": ("optimizer.min_lr_scale", float),
    "warm_up_steps": ("optimizer.warmup_steps", int),
    "warm_up_base_lr_divider": ("optimizer.warmup_base_lr_divider", float),
    "max_scheduling_steps": ("optimizer.decay_steps", int),
    "gradient_clip_val": ("optimizer.grad_clip", float),
    "max_steps": ("train.num_steps", int),
}


def _square_image(value) -> int:
  sizes = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
  if len(sizes) not in (1, 2) or sizes[0] != sizes[-1]:
    raise ConfigError(f"image_dims: expected a square size (the official models assert it), "
                      f"got {value!r}")
  return sizes[0]


def _ddim(value):
  if not value:
    raise ConfigError("use_deterministic_reverse: this project's DiT evaluates by DDIM (the "
                      "official flag on); DDPM sampling with the learned variance is not here")
  return value


# Flags of the image (IMG) and video (VID) models, mapped for that modality only (for
# text they are in _MUST_BE_DEFAULT). The video flags about the frozen encoder's input
# (frame rate, pixel normalisation, SD-VAE scaling, image size) describe how the latents
# were made: this project reads latents (`data.source=latent_npy`), so they are data.
_MAPPED_BY_MODALITY: dict[str, dict[str, tuple[str | None, Callable]]] = {
    "IMG": {
        "patch_size": ("model.patch_size", int),
        "image_dims": ("model.image_size", _square_image),
        "diffusion_steps": ("denoise.diffusion_steps", int),
        "denoise_images_noise_level": ("denoise.noise_level", float),
        "randomize_denoise_images_noise_level": ("denoise.randomize_noise_level", bool),
        "no_langevin_during_eval": ("thinking.no_langevin_during_eval", bool),
        "infer_recurse_diffusion_n_times": ("inference.recurse_diffusion", int),
        "infer_increase_steps": ("inference.increase_steps", int),
        "context_length": (None, _identity),   # unread by the image models
        # train_model.py sets backbone_type=vae for every IMG run; denoising reads no encoder.
        "backbone_type": (None, _identity), "vit_backbone_size": (None, _identity),
    },
    "VID": {
        "no_langevin_during_eval": ("thinking.no_langevin_during_eval", bool),
        "denoising_initial_condition": ("thinking.initial_condition", str),  # + most_recent_embedding
        "infer_video_condition_frames": ("inference.video_condition_frames", int),
        "backbone_type": (None, str), "vit_backbone_size": (None, str),   # model.latent_dim
        "image_dims": (None, _identity), "time_between_frames": (None, _identity),
        "sampling_rate": (None, _identity), "use_raw_framerate": (None, _identity),
        "vae_normalization": (None, _identity), "sdxl_vae_standardization": (None, _identity),
        "custom_image_normalization": (None, _identity), "preprocess_data": (None, _identity),
        "crop_all_samples": (None, _identity),
    },
}
# The DiT's reverse process (the EBT never reads it).
_MAPPED_BY_KIND = {"dit": {"use_deterministic_reverse": (None, _ddim)},
                   "image_ebt": {"use_deterministic_reverse": (None, _identity)}}
# The official video EBT's latent width: the SD VAE's 4 x 28 x 28 (hard-coded there), or
# DINOv2's feature width, which also sets embedding_dim (no down projection).
VAE_LATENT_DIM = 3136
DINO_DIMS = {"small": 384, "base": 768, "large": 1024, "giant": 1536}
_DATA_SOURCES = {"image_ebt": "image_folder", "dit": "image_folder", "latent_ebt": "latent_npy"}
_BATCH = ("batch_size_per_device", "accumulate_grad_batches")
_SIZE = ("model_size", "override_embedding_dim", "override_transformer_blocks")

# The official argparse defaults of every flag this module converts: an absent flag means
# the official default, not this project's (e.g. mcmc_step_size_learnable is off there).
OFFICIAL_DEFAULTS = {
    "model_name": "ebt", "model_size": "xxs", "override_embedding_dim": 0,
    "override_transformer_blocks": 0, "embedding_dim": 384, "num_transformer_blocks": 12,
    "multiheaded_attention_heads": 2, "ffn_dim_multiplier": None, "context_length": 0,
    "ebt_type": "default", "weight_initialization_method": "xavier",
    "weight_initialization_gain": 1.0, "vocab_to_embed_uses_prob_dist": False,
    "float_precision": "32-true", "mcmc_num_steps": 2, "mcmc_step_size": 60.0,
    "mcmc_step_size_learnable": False, "mcmc_step_size_lr_multiplier": 5000.0,
    "normalize_initial_condition": False, "denoising_initial_condition": "random_noise",
    "gaussian_random_noise_scaling": 1.0, "truncate_mcmc": False, "no_mcmc_detach": False,
    "langevin_dynamics_noise": 0.0, "langevin_dynamics_noise_learnable": False,
    "randomize_mcmc_step_size_scale": 1, "randomize_mcmc_num_steps": 0,
    "randomize_mcmc_num_steps_min": 0, "randomize_mcmc_num_steps_final_landscape": False,
    "clamp_futures_grad": False, "clamp_futures_grad_max_change": 9.0,
    "clamp_max_after_warm_up": 0.0, "absolute_clamp": 0.0, "reconstruction_coeff": 1.0,
    "contrastive_loss": False, "contrastive_loss_coeff": 0.0005,
    "soften_target_prob_dist": 0.0, "sharpen_predicted_distribution": 0.0,
    "normalize_initial_condition_only_first_step": False, "infer_ebt_advanced": False,
    "infer_ebt_num_steps": 1, "infer_ebt_override_alpha": 0.0, "infer_generated_samples": 1,
    "infer_energy_sampling_technique": "min", "infer_langevin_dynamics_noise": 0.0,
    "infer_langevin_first_step": False, "infer_accept_lower_energies": False,
    "infer_steps_final_landscape": False, "infer_alpha_final_landscape": False,
    "discrete_contrastive_loss_true_logit_val": 0.0, "mcmc_replay_buffer": False,
    "mcmc_replay_buffer_size": 192, "mcmc_replay_buffer_sample_bs_percent": 0.5,
    "peak_learning_rate": 0.02, "weight_decay": 0.01,
    "beta1": 0.9, "beta2": 0.999, "min_lr_scale": 10, "warm_up_steps": 10000,
    "warm_up_base_lr_divider": -1, "max_scheduling_steps": -1, "gradient_clip_val": 1.0,
    "max_steps": 1000000, "batch_size_per_device": 2, "accumulate_grad_batches": 1, "gpus": "-1",
    "patch_size": 8, "image_dims": [224, 224], "diffusion_steps": 1000,
    "denoise_images_noise_level": 1, "randomize_denoise_images_noise_level": False,
    "no_langevin_during_eval": False, "infer_recurse_diffusion_n_times": 0,
    "infer_increase_steps": 0, "infer_video_condition_frames": 3, "backbone_type": "dinov2",
    "vit_backbone_size": "base", "use_deterministic_reverse": False,
}


def _set(c: ml_collections.ConfigDict, path: str, value) -> None:
  section, field = path.split(".")
  c[section][field] = value


def _device_count(hparams: dict, num_devices: int) -> int:
  """GPUs of an official run: `num_gpus` (which its trainer records in checkpoints), an
  explicit `gpus` count or list of device ids (Lightning's "0,1" string included), else
  `num_devices` (`gpus="-1"` means all of them)."""
  if "num_gpus" in hparams:
    return int(hparams["num_gpus"])
  gpus = hparams["gpus"]
  if isinstance(gpus, (list, tuple)):
    return len(gpus)
  text = str(gpus).strip()
  try:
    if text.startswith("["):
      count = len(json.loads(text))
    elif "," in text:   # device ids as Lightning reads them ("0," is one device); the
      # official train_model.py counts only the bracketed form and stops on this one
      count = len([int(i) for i in text.split(",") if i.strip()])
    else:
      count = int(text)
  except ValueError:
    count = None
  if count is None or count == 0 or count < -1:
    raise ConfigError(f"gpus: expected a GPU count, -1 (all) or device ids like '0,1', "
                      f"got {gpus!r}")
  return num_devices if count == -1 else count


def from_official_hparams(hparams: dict, *, num_devices: int = 1) -> ml_collections.ConfigDict:
  """A validated config from the official flat hyperparameters (plus `vocab_size`).

  The global batch is batch_size_per_device x accumulate_grad_batches x the GPU count,
  taken from `gpus` when it is explicit, else `num_devices` (the official "-1" means
  every GPU of the job). Unknown names and values this project cannot honour raise
  `ConfigError` naming the flag.
  """
  kind = _kind(hparams)
  modality = hparams.get("modality", "NLP")
  if modality == "NLP" and "vocab_size" not in hparams:
    raise ConfigError("vocab_size: required (the official code reads it from its "
                                 "tokenizer, which this project does not download)")
  hparams = {**OFFICIAL_DEFAULTS, **hparams}
  c = config_lib.base_config()
  c.model.kind = kind
  here = {**_MAPPED_BY_MODALITY.get(modality, {}), **_MAPPED_BY_KIND.get(kind, {})}
  for name, value in hparams.items():
    if name in _KIND_FLAGS:
      pass
    elif name in here:
      path, convert = here[name]
      converted = convert(value)
      if path is not None:
        _set(c, path, converted)
    elif name in _MAPPED:
      path, convert = _MAPPED[name]
      converted = convert(value)
      if path is not None:
        _set(c, path, converted)
    elif name in _MAPPED_TRAIN:
      path, convert = _MAPPED_TRAIN[name]
      _set(c, path, convert(value))
    elif name in _MUST_BE_DEFAULT:
      if value not in _MUST_BE_DEFAULT[name]:
        raise ConfigError(
            f"{name}: this project cannot honour {value!r} yet (supported: "
            f"{', '.join(repr(v) for v in _MUST_BE_DEFAULT[name])})")
    elif name in _PLUMBING or name in _ONLY_WITH_DISABLED_FEATURE or name in _BATCH \
        or name in _ADVANCED_INFERENCE \
        or name in _SIZE or name in _UNREAD_BY_TEXT_MODEL:
      pass
    else:
      raise ConfigError(f"{name}: not an official EBT hyperparameter this project knows")

  if hparams["max_scheduling_steps"] == -1:
    c.optimizer.decay_steps = int(hparams["max_steps"])
  size = hparams["model_size"]
  if size:
    if size not in MODEL_SIZES:
      raise ConfigError(f"model_size: expected one of {sorted(MODEL_SIZES)}, got {size!r}")
    c.model.dim, c.model.n_layers, c.model.n_heads = MODEL_SIZES[size]
  if hparams["override_embedding_dim"] > 0:
    c.model.dim = int(hparams["override_embedding_dim"])
  if hparams["override_transformer_blocks"] > 0:
    c.model.n_layers = int(hparams["override_transformer_blocks"])
  if modality == "VID":
    if hparams["backbone_type"] == "vae":
      c.model.latent_dim = VAE_LATENT_DIM
    elif hparams["backbone_type"] == "dinov2" and hparams["vit_backbone_size"] in DINO_DIMS:
      c.model.dim = c.model.latent_dim = DINO_DIMS[hparams["vit_backbone_size"]]
    else:
      raise ConfigError(f"backbone_type/vit_backbone_size: expected 'vae', or 'dinov2' with one "
                        f"of {sorted(DINO_DIMS)}, got {hparams['backbone_type']!r}/"
                        f"{hparams['vit_backbone_size']!r}")
  if kind in _DATA_SOURCES:
    c.data.source = _DATA_SOURCES[kind]
  if kind in ("image_ebt", "latent_ebt"):
    _continuous_advanced_inference(c, hparams, kind)
  else:
    _advanced_inference(c, hparams, kind)
  devices = _device_count(hparams, num_devices)
  c.train.batch_size = (int(hparams["batch_size_per_device"]) *
                        int(hparams["accumulate_grad_batches"]) * devices)
  # One replay buffer per GPU, as the official code keeps (its size is per GPU).
  c.thinking.replay_buffer_groups = devices
  tasks.build(c)   # validates
  return c


def _continuous_advanced_inference(c: ml_collections.ConfigDict, h: dict, kind: str) -> None:
  """`infer_ebt_advanced` of the image and video EBTs. The image EBT's is its forward with
  `infer_ebt_num_steps` N official steps (the final one R+1 times with S2's random step
  counts R; no other infer_* flag is read); the video EBT's raises NotImplementedError."""
  if not h["infer_ebt_advanced"]:
    return
  if kind == "latent_ebt":
    raise ConfigError("infer_ebt_advanced: the official video EBT has no advanced inference "
                      "(its ebt_advanced_inference raises NotImplementedError)")
  n = int(h["infer_ebt_num_steps"])
  if n < 1:
    raise ConfigError(f"infer_ebt_num_steps: expected a positive integer, got {n}")
  c.inference.thinking_steps = n + c.thinking.random_steps


# --- config -> official flags (for `ebt export-torch`) --------------------------------------
_INVERSE = {   # official name -> config value -> flag value, where not the value itself
    "no_mcmc_detach": lambda v: not v,
    "float_precision": lambda v: {"float32": "32-true", "bfloat16": "bf16-mixed",
                                  "float16": "16-mixed", "float64": "64-true"}[v],
    "image_dims": lambda v: [v, v],
    "max_scheduling_steps": lambda v: -1 if v is None else v,
}
# Config values the official models cannot take (their code hard-codes these).
_OFFICIAL_ONLY = {"model.norm_eps": 1e-5, "model.rope_theta": 10000.0,
                  "thinking.inner_optimizer": "gd"}


def to_official_hparams(c: ml_collections.ConfigDict) -> dict:
  """The official flags that build `c`'s model and training (what an official Lightning
  checkpoint keeps as `hyper_parameters`): `from_official_hparams` of the result gives back
  every mapped field. Widths are explicit (`model_size` ""); the global batch is written
  per GPU over `thinking.replay_buffer_groups` GPUs (one replay buffer each, as the
  official code keeps). A config the official code cannot build raises `ConfigError`."""
  kind = tasks.build(c).name   # validates
  (modality, model_name), = [key for key, value in _KINDS.items() if value == kind]
  for path, value in _OFFICIAL_ONLY.items():
    section, field = path.split(".")
    if c[section][field] != value:
      raise ConfigError(f"{path}: the official code has only {value!r}, got "
                        f"{c[section][field]!r}")
  flags = {"modality": modality, "model_name": model_name, "model_size": "",
           "override_embedding_dim": 0, "override_transformer_blocks": 0}
  here = {**_MAPPED_BY_MODALITY.get(modality, {}), **_MAPPED_BY_KIND.get(kind, {})}
  for name, (path, _) in {**_MAPPED, **_MAPPED_TRAIN, **here}.items():
    if path is not None and (modality == "NLP" or name != "vocab_size"):
      section, field = path.split(".")
      flags[name] = _INVERSE.get(name, lambda v: v)(c[section][field])
  if modality == "IMG":
    flags["image_task"] = "denoising"
    if c.model.image_channels != 3:
      raise ConfigError(f"model.image_channels: the official denoising models take RGB (3), "
                        f"got {c.model.image_channels}")
    if kind == "dit":
      if not c.model.learn_sigma:
        raise ConfigError("model.learn_sigma: the official DiT always learns the variance (True)")
      flags["use_deterministic_reverse"] = True
  if modality == "NLP":
    if kind == "ebt" and c.thinking.grad_wrt != "probs":
      raise ConfigError(f"thinking.grad_wrt: the official text EBT steps on probabilities "
                        f"('probs'), got {c.thinking.grad_wrt!r}")
  if modality == "VID":
    dino = {dim: size for size, dim in DINO_DIMS.items()}
    if c.model.latent_dim == VAE_LATENT_DIM:
      flags["backbone_type"] = "vae"
    elif c.model.latent_dim == c.model.dim and c.model.dim in dino:
      flags.update(backbone_type="dinov2", vit_backbone_size=dino[c.model.dim])
    else:
      raise ConfigError(f"model.latent_dim: the official video EBT reads SD-VAE latents "
                        f"({VAE_LATENT_DIM}) or DINOv2 features (latent_dim == dim, one of "
                        f"{sorted(dino)}), got {c.model.latent_dim} at dim {c.model.dim}")
  groups = c.thinking.replay_buffer_groups
  if c.train.batch_size % groups:
    raise ConfigError(f"train.batch_size: {c.train.batch_size} does not split over "
                      f"thinking.replay_buffer_groups={groups} GPUs")
  flags.update(batch_size_per_device=c.train.batch_size // groups, accumulate_grad_batches=1,
               num_gpus=groups, gpus=str(groups))
  return flags

# --- official job scripts ------------------------------------------------------------------
# The scripts (job_scripts/**/*.sh) set a few shell variables, then run
# `python train_model.py --flag value ...`; SLURM reads its resources from `#SBATCH`
# comments. The expansions they use are resolved here (plain `${V}`, array elements
# `${V[${SLURM_ARRAY_TASK_ID}]}`, `${V%%-*}`, `${V#*-}`, `${V:+word}`); a variable the
# script does not set (a data directory) stays literal.
_EXPANSION = re.compile(r"\$\{(\w+)(?:\[\$\{?SLURM_ARRAY_TASK_ID\}?\])?(%%-\*|#\*-|:\+[^}]*)?\}")


def _expand(text: str, variables: dict, index: int) -> str:
  def one(match):
    name, op = match.group(1), match.group(2)
    value = variables.get(name)
    if value is None:
      return match.group(0)
    value = value[min(index, len(value) - 1)] if isinstance(value, list) else value
    if op == "%%-*":
      return value.split("-")[0]
    if op == "#*-":
      return value.split("-", 1)[-1]
    if op and op.startswith(":+"):
      return op[2:] if value else ""
    return value
  return _EXPANSION.sub(one, text)


def parse_job_script(text: str, *, array_index: int = 0) -> tuple[dict, int | None]:
  """(flags, GPUs) of an official job script: its `train_model.py` flags (numbers as
  int/float, a flag without a value True, several values a list; argparse's `type=`
  conversions) for SLURM array task `array_index`, and nodes x gpus-per-node from its
  `#SBATCH` lines (None where it names none)."""
  variables: dict = {"SLURM_ARRAY_TASK_ID": str(array_index)}
  sbatch: dict = {}
  command = None
  lines = text.replace("\\\n", " ").splitlines()
  for line in lines:
    line = line.strip()
    if line.startswith("#SBATCH"):
      key, _, value = line[len("#SBATCH"):].strip().lstrip("-").partition("=")
      sbatch[key] = value.strip()
      continue
    if "train_model.py" in line:
      command = line.split("train_model.py", 1)[1]
      break
    for statement in line.split(";"):
      assign = re.fullmatch(r"\s*(?:export\s+)?(\w+)=(.*)", statement)
      if assign:
        name, value = assign.groups()
        value = _expand(value.strip(), variables, array_index)
        words = shlex.split(value, comments=True)
        if value.startswith("("):
          variables[name] = [w.strip("()") for w in words if w.strip("()")]
        else:
          variables[name] = " ".join(words)
  if command is None:
    raise ConfigError("job script: no `python train_model.py ...` command found")
  flags: dict = {}
  name = None
  for token in shlex.split(_expand(command, variables, array_index)):
    if token.startswith("--"):
      name = token[2:]
      flags[name] = True
    elif name is None:
      raise ConfigError(f"job script: a value {token!r} before any --flag")
    elif flags[name] is True:
      flags[name] = config_lib.parse_scalar(token)
    else:
      previous = flags[name] if isinstance(flags[name], list) else [flags[name]]
      flags[name] = previous + [config_lib.parse_scalar(token)]
  gpus = None
  if "gpus-per-node" in sbatch:
    gpus = int(sbatch.get("nodes", "1")) * int(sbatch["gpus-per-node"])
  return flags, gpus
