"""Config validation and the official-hyperparameter conversion."""

import importlib
from pathlib import Path

import pytest

from ebt_jax import cli
from ebt_jax import config as config_lib
from ebt_jax import tasks
from ebt_jax.errors import ConfigError
from ebt_jax.official_hparams import from_official_hparams

CONFIGS = Path(__file__).parent.parent / "configs"

# The flags of the official job script job_scripts/nlp/pretrain/ebt_s1.sh, as a dict
# (model_size xxs; 4 GPUs per node), plus the vocabulary size of its tokenizer.
S1_SCRIPT = {
    "run_name": "ebt-xxs-bs_256_s1_lr_0.0012", "modality": "NLP", "model_name": "ebt",
    "model_size": "xxs", "pretokenize_dataset": True, "tokenizer": "EleutherAI/gpt-neox-20b",
    "normalize_initial_condition": True, "ebt_type": "time_embed",
    "denoising_initial_condition": "random_noise", "mcmc_step_size_learnable": True,
    "mcmc_step_size": 500, "mcmc_step_size_lr_multiplier": 1500, "mcmc_num_steps": 2,
    "context_length": 256, "gpus": "-1", "peak_learning_rate": 0.0012,
    "batch_size_per_device": 32, "accumulate_grad_batches": 2, "gradient_clip_val": 1.0,
    "weight_decay": 0.01, "min_lr_scale": 10, "max_steps": 1000000,
    "max_scheduling_steps": 1000000, "warm_up_steps": 10000, "dataset_name": "pajama",
    "num_workers": 12, "validation_split_pct": 0.0005, "val_check_interval": 15000,
    "wandb_project": "nlp_pretrain", "log_model_archi": True, "log_gradients": True,
    "set_matmul_precision": "medium", "wandb_watch": True, "vocab_size": 50277,
}


def test_s1_job_script_converts():
  c = from_official_hparams(S1_SCRIPT, num_devices=4)
  assert (c.model.kind, c.model.ebt_type) == ("ebt", "time_embed")
  assert (c.model.dim, c.model.n_layers, c.model.n_heads) == (384, 6, 6)
  assert c.model.vocab_size == 50277 and c.model.context_length == 256
  assert c.model.ffn_dim_multiplier is None
  t = c.thinking
  assert (t.num_steps, t.step_size, t.step_size_lr_multiplier) == (2, 500.0, 1500.0)
  assert t.step_size_learnable and t.normalize_initial_condition and t.detach
  assert not t.truncate and t.initial_condition == "random_noise"
  o = c.optimizer
  assert (o.peak_lr, o.weight_decay, o.min_lr_scale, o.warmup_steps, o.decay_steps) == (
      0.0012, 0.01, 10.0, 10000, 1000000)
  assert c.train.batch_size == 256 and c.train.num_steps == 1000000


def test_absent_flags_take_the_official_defaults():
  c = from_official_hparams({"vocab_size": 100, "context_length": 64})
  assert c.model.ebt_type == "default"
  assert (c.model.dim, c.model.n_layers, c.model.n_heads) == (384, 6, 6)  # model_size xxs
  assert c.thinking.step_size == 60.0 and not c.thinking.step_size_learnable
  assert not c.thinking.normalize_initial_condition
  assert c.optimizer.decay_steps == 1000000       # max_scheduling_steps -1 -> max_steps
  assert c.train.batch_size == 2
  c = from_official_hparams({"vocab_size": 100, "context_length": 64, "model_size": "",
                             "embedding_dim": 96, "multiheaded_attention_heads": 4,
                             "num_transformer_blocks": 3, "gpus": "[0, 1]",
                             "override_transformer_blocks": 5, "no_mcmc_detach": True,
                             "model_name": "baseline_transformer"})
  assert (c.model.dim, c.model.n_heads, c.model.n_layers) == (96, 4, 5)
  assert c.train.batch_size == 4 and not c.thinking.detach and c.model.kind == "transformer"


@pytest.mark.parametrize("flags,message", [
    ({"not_a_flag": 1}, "not_a_flag: not an official EBT hyperparameter"),
    ({"sharpen_predicted_distribution": -2.0}, "thinking.sharpen: expected a number >= 0"),
    ({"randomize_mcmc_num_steps": 1, "randomize_mcmc_num_steps_min": 3},
     r"thinking.random_steps_min: expected an integer in \[0, random_steps \+ 1 = 2\]"),
    ({"ebt_norm": "dyt"}, "ebt_norm: this project cannot honour 'dyt'"),
    ({"modality": "AUDIO"}, "modality: expected 'NLP', 'IMG' or 'VID'"),
    ({"model_name": "diffusion"}, "model_name: expected one of"),
    ({"denoising_initial_condition": "most_recent_embedding"}, "denoising_initial_condition"),
    ({"model_size": "huge"}, "model_size: expected one of"),
    ({"patch_size": 4}, "patch_size: this project cannot honour 4"),
])
def test_unknown_or_unsupported_flags_raise_naming_them(flags, message):
  with pytest.raises(ConfigError, match=message):
    from_official_hparams({"vocab_size": 100, "context_length": 64, **flags})


def test_vocab_size_is_required():
  with pytest.raises(ConfigError, match="vocab_size: required"):
    from_official_hparams({"context_length": 64})


def test_plumbing_flags_are_ignored():
  c = from_official_hparams({"vocab_size": 100, "context_length": 64, "wandb_entity": "me",
                             "num_workers": 99, "debug_mode": True, "profiler": "simple",
                             "no_langevin_during_eval": True})   # unread by the text model
  assert c.model.vocab_size == 100


@pytest.mark.parametrize("path,value,message", [
    ("model.n_heads", 5, "model.n_heads: expected a divisor of model.dim=384"),
    ("model.n_heads", 128, "model.n_heads: expected a count giving an even head size"),
    ("model.ebt_type", "transformer_xl", "model.ebt_type: expected one of"),
    ("model.kind", "rnn", "model.kind: expected one of"),
    ("model.dim", -8, "model.dim: expected a positive integer"),
    ("model.context_length", 0, "model.context_length: expected a positive integer"),
    ("model.dtype", "float8", "model.dtype: expected one of"),
    ("thinking.num_steps", -1, "thinking.num_steps: expected a positive integer"),
    ("thinking.step_size", 0.0, "thinking.step_size: expected a positive number"),
    ("thinking.grad_wrt", "energy", "thinking.grad_wrt"),
    ("thinking.inner_optimizer", "lbfgs", "thinking.inner_optimizer: expected one of"),
    ("thinking.langevin_noise", -1.0, "thinking.langevin_noise"),
    ("thinking.step_size_random_scale", 0.0, "thinking.step_size_random_scale"),
    ("thinking.random_steps", -1, "thinking.random_steps: expected an integer >= 0"),
    ("thinking.absolute_clamp", -1.0, "thinking.absolute_clamp"),
    ("optimizer.b2", 1.0, r"optimizer.b2: expected a number in \[0, 1\)"),
    ("optimizer.warmup_base_lr_divider", 0.5, "optimizer.warmup_base_lr_divider"),
    ("train.batch_size", 0, "train.batch_size: expected a positive integer"),
])
def test_bad_values_raise_one_line_naming_the_field(path, value, message):
  c = config_lib.base_config()
  section, field = path.split(".")
  c[section][field] = value
  with pytest.raises(ConfigError, match=message) as info:
    tasks.build(c)   # the shared checks (config.validate), then the kind's own
  assert "\n" not in str(info.value)


# Config files with variants (`--config NAME:VARIANT`), and variants each must keep.
VARIANT_CONFIGS = {"denoise": ("cpu", "paper"), "dit": ("cpu", "paper"),
                   "nextframe": ("cpu", "paper"), "ebt_s2": ("cpu", "xxs"),
                   "ebt_s1": ("xxs",), "transformer": ("xxs",)}


@pytest.mark.parametrize("name", sorted(VARIANT_CONFIGS))
def test_every_variant_validates_and_names_its_run(name):
  variants = list(importlib.import_module(f"ebt_jax.configs.{name}").VARIANTS)
  assert set(VARIANT_CONFIGS[name]) <= set(variants)
  for variant in variants:
    config, run_name = cli.load_config_file(f"{name}:{variant}")
    tasks.build(config)   # validates
    assert run_name == f"{name}_{variant}"


def test_variant_by_path_or_bundled_name_and_the_default():
  by_path, name = cli.load_config_file(f"{CONFIGS / 'denoise.py'}:paper")
  by_name, _ = cli.load_config_file("denoise.py:paper")
  assert name == "denoise_paper" and by_path.to_dict() == by_name.to_dict()
  assert (by_path.model.image_size, by_path.thinking.num_steps) == (128, 1)
  default, name = cli.load_config_file("denoise")           # the CPU variant
  assert name == "denoise"
  assert default.to_dict() == cli.load_config_file("denoise:cpu")[0].to_dict()
  assert cli.load_config_file("ebt_s1")[0].model.dim == 384   # no CPU variant: xxs
  assert cli.load_config_file("ebt_s1:small")[0].model.dim == 768
  transformer = cli.load_config_file("transformer:small")[0]
  assert (transformer.model.kind, transformer.model.dim) == ("transformer", 768)
  assert cli.load_config_file("tiny_cpu")[1] == "tiny_cpu"     # no variants: get_config()


@pytest.mark.parametrize("spec,message", [
    ("denoise:gpu", "--config denoise:gpu: unknown variant 'gpu'; valid variants: cpu, s2_cpu, paper"),
    ("ebt_s2:huge", "--config ebt_s2:huge: unknown variant 'huge'; valid variants: cpu, 4xs, "),
    ("tiny_cpu:paper", "--config tiny_cpu:paper: tiny_cpu.py has no variants"),
    ("no_such:cpu", "--config: no file 'no_such' and no bundled config of that name"),
])
def test_bad_config_specs_raise_one_line(spec, message):
  with pytest.raises(ConfigError) as info:
    cli.load_config_file(spec)
  assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_unknown_variant_on_the_command_line_exits_2(capsys):
  assert cli.main(["compile-report", "--config", "dit:gpu"]) == 2
  assert capsys.readouterr().err == ("ebt compile-report: error: --config dit:gpu: unknown "
                                     "variant 'gpu'; valid variants: cpu, paper\n")


def test_override_forms():
  c = config_lib.base_config()
  cli.apply_overrides(c, ["--config.thinking.detach", "false", "--config.model.dim=64",
                          "--config.optimizer.decay_steps=100", "--config.train.peak_tflops", "9",
                          "--config.inference.ddim_steps=(1, 5)", "--config.data.path=a:b"])
  assert not c.thinking.detach and c.model.dim == 64 and c.train.peak_tflops == 9.0
  assert c.inference.ddim_steps == (1, 5) and c.data.path == "a:b"
  cli.apply_overrides(c, ["--config.optimizer.decay_steps=none", "--config.thinking.detach=yes"])
  assert c.optimizer.decay_steps is None and c.thinking.detach
  for bad, message in [(["--config.model.dimm=3"], "--config.model.dimm: the config has no such"),
                       (["--config.modle.dim=3"], "--config.modle.dim: the config has no section"),
                       (["--config.model.dim"], "--config.model.dim: missing a value"),
                       (["stray"], "stray: unexpected argument")]:
    with pytest.raises(ConfigError, match=message):
      cli.apply_overrides(c, bad)
