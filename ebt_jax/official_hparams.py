"""The official code's flat hyperparameters (its `train_model.py` flags) -> a config.

Every official flag name falls in exactly one of four groups:

* mapped: converted to a config field (`_MAPPED`);
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
"""

from __future__ import annotations

import json
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
    "sharpen_predicted_distribution": (0, 0.0),
    "soften_target_prob_dist": (0, 0.0),
    "normalize_initial_condition_only_first_step": (False,),
    "ebt_norm": ("rms",),
    "ebt_act_func": ("silu",),
    "learnable_process_memory": (False,),
    "process_memory_type": (None,),
    "process_memory_linear_layer": (False,),
    "num_modality_processing_mlp_layers": (1,),
    "out_of_bounds_loss_coeff": (0, 0.0),
    "energy_loss_coeff": (0, 0.0),
    "execution_mode": ("pretrain",),
    "finetuning_model_ckpt": (None, ""),
    "optimizer": ("adamw",),
    "lr_scaling_rule": (False,),
    "infer_ebt_advanced": (False,),
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
scale_cosine_sim_decay infer_ebt_num_steps infer_ebt_override_alpha infer_generated_samples
infer_langevin_dynamics_noise infer_langevin_first_step infer_energy_sampling_technique
infer_accept_lower_energies infer_steps_final_landscape infer_alpha_final_landscape
""".split())

# Flags the official text EBT never reads (only its image models do), so any value
# trains the same text model: `no_langevin_during_eval` (the NLP model keeps Langevin
# noise in validation whatever it says).
_UNREAD_BY_TEXT_MODEL = frozenset({"no_langevin_during_eval"})


def _model_name(value):
  kinds = {"ebt": "ebt", "baseline_transformer": "transformer"}
  if value not in kinds:
    raise ConfigError(
        f"model_name: expected one of {sorted(kinds)} (text models), got {value!r}")
  return kinds[value]


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


def _modality(value):  # absent means NLP: only text models take a vocab_size
  if value != "NLP":
    raise ConfigError(f"modality: expected 'NLP' (the text EBT), got {value!r}")
  return value


_identity: Callable[[Any], Any] = lambda v: v

# official name -> (config path, converter); path None = checked only.
_MAPPED: dict[str, tuple[str | None, Callable]] = {
    "modality": (None, _modality),
    "model_name": ("model.kind", _model_name),
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
}

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
    "discrete_contrastive_loss_true_logit_val": 0.0, "mcmc_replay_buffer": False,
    "mcmc_replay_buffer_size": 192, "mcmc_replay_buffer_sample_bs_percent": 0.5,
    "peak_learning_rate": 0.02, "weight_decay": 0.01,
    "beta1": 0.9, "beta2": 0.999, "min_lr_scale": 10, "warm_up_steps": 10000,
    "warm_up_base_lr_divider": -1, "max_scheduling_steps": -1, "gradient_clip_val": 1.0,
    "max_steps": 1000000, "batch_size_per_device": 2, "accumulate_grad_batches": 1, "gpus": "-1",
}


def _set(c: ml_collections.ConfigDict, path: str, value) -> None:
  section, field = path.split(".")
  c[section][field] = value


def _device_count(hparams: dict, num_devices: int) -> int:
  """GPUs of an official run: `num_gpus` (which its trainer records in checkpoints), an
  explicit `gpus` count or list, else `num_devices` (`gpus="-1"` means all of them)."""
  if "num_gpus" in hparams:
    return int(hparams["num_gpus"])
  text = str(hparams["gpus"]).strip()
  if text.startswith("["):
    return len(json.loads(text))
  return num_devices if int(text) == -1 else int(text)


def from_official_hparams(hparams: dict, *, num_devices: int = 1) -> ml_collections.ConfigDict:
  """A validated config from the official flat hyperparameters (plus `vocab_size`).

  The global batch is batch_size_per_device x accumulate_grad_batches x the GPU count,
  taken from `gpus` when it is explicit, else `num_devices` (the official "-1" means
  every GPU of the job). Unknown names and values this project cannot honour raise
  `ConfigError` naming the flag.
  """
  if "vocab_size" not in hparams:
    raise ConfigError("vocab_size: required (the official code reads it from its "
                                 "tokenizer, which this project does not download)")
  hparams = {**OFFICIAL_DEFAULTS, **hparams}
  c = config_lib.base_config()
  for name, value in hparams.items():
    if name in _MAPPED:
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
  devices = _device_count(hparams, num_devices)
  c.train.batch_size = (int(hparams["batch_size_per_device"]) *
                        int(hparams["accumulate_grad_batches"]) * devices)
  # One replay buffer per GPU, as the official code keeps (its size is per GPU).
  c.thinking.replay_buffer_groups = devices
  tasks.build(c)   # validates
  return c
