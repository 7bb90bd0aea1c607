"""Official runs in and out for every kind: job scripts -> configs, torch files written
without torch, and import(export(run)) == run bit for bit (text EBT, Transformer++, image
EBT, DiT, video EBT from VAE latents and from DINOv2 features)."""

import collections
import json
import subprocess
import zipfile
from pathlib import Path

import chex
import jax
import ml_dtypes
import numpy as np
import pytest

import ebt_jax
import ebt_jax.cli
import ebt_jax.training.runs
from ebt_jax import official_hparams as oh
from ebt_jax import tasks
from ebt_jax.checkpoint import export_official, import_official
from ebt_jax.checkpoint.torch_file import load_torch_file, state_dict_and_hparams
from ebt_jax.checkpoint import torch_write
from ebt_jax.checkpoint.torch_write import save_torch_file
from ebt_jax.errors import ConfigError
from ebt_jax.models.params import shapes_tree
from conftest import tiny_config

# What the official job scripts pass to train_model.py, and the GPUs they ask for (see
# tests/data/official_job_scripts/README.md).
DATA = Path(__file__).parent / "data" / "official_job_scripts"
JOB_SCRIPTS = json.loads((DATA / "job_scripts.json").read_text())
# Scripts refused in one line, and why: text-to-image is not a task here, the video
# Transformer++ baseline is not a model here, and the video EBT inference scripts ask for
# an advanced inference the official video EBT does not have (it raises there).
REFUSED = {
    "vid/inference/ebt_k400_vae.sh": "infer_ebt_advanced: .*NotImplementedError",
    "vid/inference/ebt_ssv2_vae.sh": "infer_ebt_advanced: .*NotImplementedError",
    "img/pretrain_t2i/dit.sh": "image_task: 't2i'",
    "img/pretrain_t2i/ebt_s1.sh": "image_task: 't2i'",
    "img/pretrain_t2i/ebt_s2.sh": "image_task: 't2i'",
    "vid/pretrain/baseline_transformer_dino.sh": "model_name: .*'VID'",
    "vid/pretrain/baseline_transformer_vae.sh": "model_name: .*'VID'",
    "vid/inference/baseline_transformer_k400_vae.sh": "model_name: .*'VID'",
    "vid/inference/baseline_transformer_ssv2_vae.sh": "model_name: .*'VID'",
}
KIND_OF_DIR = {"nlp": ("ebt", "transformer"), "img": ("image_ebt", "dit"), "vid": ("latent_ebt",)}


# Every train_model.py argparse default (at the scripts' commit): what a checkpoint's
# hyper_parameters hold beside the flags a script sets.
DEFAULTS = json.loads((DATA / "train_model_defaults.json").read_text())


def _as_checkpoint_hparams(flags, gpus):
  """The hyper_parameters an official run of `flags` saves: every argparse value, after
  train_model.py's own edits (the size preset, IMG's backbone, DINOv2's width)."""
  h = {**DEFAULTS, **flags, "num_gpus": gpus}
  if h["model_size"]:
    h["embedding_dim"], h["num_transformer_blocks"], h["multiheaded_attention_heads"] = \
        oh.MODEL_SIZES[h["model_size"]]
  if h["modality"] == "IMG":
    h["backbone_type"] = "vae"
  if h["modality"] == "VID" and h["backbone_type"] == "dinov2":
    h["vit_backbone_dim"] = h["embedding_dim"] = oh.DINO_DIMS[h["vit_backbone_size"]]
  return h


@pytest.mark.parametrize("script", sorted(JOB_SCRIPTS))
def test_every_official_job_script_converts(script):
  """Its flags alone, and as a checkpoint of its run would hold them, give one config."""
  flags, gpus = dict(JOB_SCRIPTS[script]["flags"]), JOB_SCRIPTS[script]["gpus"]
  flags["vocab_size"] = 50277   # the NLP scripts' tokenizer (gpt-neox-20b), not downloaded
  if script in REFUSED:
    for hparams in (flags, _as_checkpoint_hparams(flags, gpus)):
      with pytest.raises(ConfigError, match=REFUSED[script]):
        oh.from_official_hparams(hparams, num_devices=gpus)
    return
  c = oh.from_official_hparams(flags, num_devices=gpus)   # validates
  assert oh.from_official_hparams(_as_checkpoint_hparams(flags, gpus)).to_dict() == c.to_dict()
  if flags.get("infer_ebt_num_steps"):   # the inference scripts' thinking steps
    assert c.inference.thinking_steps == flags["infer_ebt_num_steps"]
  assert c.model.kind in KIND_OF_DIR[script.split("/")[0]]
  per_step = flags["batch_size_per_device"] * flags["accumulate_grad_batches"]
  assert c.train.batch_size == per_step * gpus
  assert c.optimizer.peak_lr == float(flags["peak_learning_rate"])


# A job script in the official scripts' form: #SBATCH resources, shell variables and
# one-element-per-array-task arrays, bash expansions, `\` continuations (blank ones too).
JOB_SCRIPT = """### resources ###
#SBATCH --array=0-1
#SBATCH --nodes=2
#SBATCH --gpus-per-node=4
export RUN_NAME="ebt-large-s2_x"
export MODEL_NAME="${RUN_NAME%%-*}"
export MODEL_SIZE="${RUN_NAME#*-}"; export MODEL_SIZE="${MODEL_SIZE%%-*}"
mkdir -p logs/
lr=(0.0001 0.0002) # one per array task
SETS=("pajama" "lambada")
DATASET=${SETS[$SLURM_ARRAY_TASK_ID]}

${SLURM_ARRAY_TASK_ID:+srun} python train_model.py \\
--run_name ${RUN_NAME}${lr[${SLURM_ARRAY_TASK_ID}]} \\
--model_name ${MODEL_NAME} --model_size ${MODEL_SIZE} \\
\\
--peak_learning_rate ${lr[$SLURM_ARRAY_TASK_ID]} --image_dims 128 128 \\
--truncate_mcmc --dataset_name ${DATASET} --dataset_dir ${DATA_DIR} --gpus "-1" \\
--wandb_project 'two words' \\
${SLURM_ARRAY_TASK_ID:+--is_slurm_run}
"""


def test_job_script_parsing():
  flags, gpus = oh.parse_job_script(JOB_SCRIPT, array_index=1)
  assert gpus == 8
  assert flags == {"run_name": "ebt-large-s2_x0.0002", "model_name": "ebt", "model_size": "large",
                   "peak_learning_rate": 0.0002, "image_dims": [128, 128], "truncate_mcmc": True,
                   "dataset_name": "lambada", "dataset_dir": "${DATA_DIR}", "gpus": -1,
                   "wandb_project": "two words", "is_slurm_run": True}
  # The same arguments as bash gives `python` running the script (unset directories kept
  # literal, as the parser keeps them).
  stub = 'python() { shift; printf "%s\\0" "$@"; }; srun() { "$@"; }; mkdir() { :; }\n'
  argv = subprocess.run(["bash", "-c", stub + JOB_SCRIPT], capture_output=True, text=True,
                        check=True, env={"SLURM_ARRAY_TASK_ID": "1", "DATA_DIR": "${DATA_DIR}"}
                        ).stdout.split("\0")[:-1]
  assert argv == [word for name, value in flags.items() for word in
                  [f"--{name}"] + ([] if value is True else [str(v) for v in np.atleast_1d(value)])]
  assert oh.parse_job_script("#SBATCH --nodes=3\npython train_model.py --x") == ({"x": True}, None)
  with pytest.raises(ConfigError, match="no `python train_model.py"):
    oh.parse_job_script("echo hi\n")
  with pytest.raises(ConfigError, match="a value 'stray' before any --flag"):
    oh.parse_job_script("python train_model.py stray --x 1\n")


@pytest.mark.parametrize("gpus,count", [("0,1", 2), ("1,", 1), ("[0, 1, 2]", 3), ([0, 3], 2),
                                        ("3", 3), (-1, 4), ("-1", 4)])
def test_gpu_count_of_the_gpus_flag(gpus, count):
  """`gpus` as Lightning reads it (device ids or a count; -1 is every device)."""
  assert oh._device_count({"gpus": gpus}, num_devices=4) == count


def test_gpu_list_sets_the_batch():
  flags = {"vocab_size": 11, "model_size": "4xs", "context_length": 8,
           "batch_size_per_device": 3, "accumulate_grad_batches": 2}
  assert oh.from_official_hparams({**flags, "gpus": "0,1"}).train.batch_size == 12
  for bad in ("two", "0", "-2", ","):
    with pytest.raises(ConfigError, match=f"gpus: expected a GPU count.*got '{bad}'"):
      oh.from_official_hparams({**flags, "gpus": bad})


def _configs():
  """A tiny config of every kind with an official counterpart."""
  text = tiny_config("adaln")
  baseline = tiny_config("default", kind="transformer")
  image = tiny_config("default")
  image.model.update(kind="image_ebt", image_size=8, patch_size=4, ffn_dim_multiplier=2.0)
  image.data.source = "image_folder"
  dit = tiny_config("default")
  dit.model.update(kind="dit", image_size=8, patch_size=4)
  video_vae = tiny_config("time_embed")
  video_vae.model.update(kind="latent_ebt", latent_dim=oh.VAE_LATENT_DIM, n_layers=1)
  video_vae.thinking.initial_condition = "most_recent_embedding"   # a video-only choice
  video_dino = tiny_config("time_embed")   # DINOv2-small features: no down projection
  video_dino.model.update(kind="latent_ebt", dim=384, latent_dim=384, n_heads=6, n_layers=1)
  return {"text_ebt": text, "transformer": baseline, "image_ebt": image, "dit": dit,
          "video_vae": video_vae, "video_dino": video_dino}


def _random_params(c):
  """Parameters of `c`'s shapes, all distinct (initial ones are mostly zeros and ones), from
  numpy: nothing to compile."""
  rng = np.random.default_rng(7)
  return jax.tree_util.tree_map(lambda shape: rng.normal(size=shape).astype(np.float32),
                                shapes_tree(tasks.build(c).param_specs()),
                                is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("name", list(_configs()))
def test_import_of_export_is_the_run(name, tmp_path):
  """Through a torch file and the official flags alone: the config comes back from the
  hyperparameters, the parameters bit for bit."""
  c = _configs()[name]
  params = _random_params(c)
  state_dict = collections.OrderedDict(
      ("model." + k, v) for k, v in export_official(params, c).items())
  path = tmp_path / "run.ckpt"
  save_torch_file({"state_dict": state_dict, "hyper_parameters": oh.to_official_hparams(c)}, path)
  sd, hparams = state_dict_and_hparams(load_torch_file(path))
  c2 = oh.from_official_hparams(hparams)
  modality = hparams["modality"]   # its own flags replace the shared ones they share a name with
  mapped = {**oh._MAPPED, **oh._MAPPED_TRAIN, **oh._MAPPED_BY_MODALITY.get(modality, {})}
  for official_name, (field, _) in mapped.items():
    # Unwritten: decay_steps None (written as max_steps), a vocabulary without tokens.
    if field and field != "optimizer.decay_steps" and (modality, field) != ("IMG", "model.vocab_size") \
        and (modality, field) != ("VID", "model.vocab_size"):
      section, key = field.split(".")
      assert c2[section][key] == c[section][key], (official_name, field)
  assert c2.model.kind == c.model.kind and c2.train.batch_size == c.train.batch_size
  chex.assert_trees_all_equal(import_official(sd, c2), params)


def test_official_names_and_layouts_of_the_image_models():
  c = _configs()["dit"]
  params = _random_params(c)
  sd = export_official(params, c)
  D, p, out = 16, 4, 4 * 4 * 6   # learn_sigma: 2 x 3 channels per pixel
  shapes = {"diffusion_transformer.x_embedder.proj.weight": (D, 3, p, p),
            "diffusion_transformer.pos_embed": (1, 4, D),
            "diffusion_transformer.t_embedder.mlp.0.weight": (D, 256),
            "diffusion_transformer.blocks.1.attn.qkv.weight": (3 * D, D),
            "diffusion_transformer.blocks.1.attn.qkv.bias": (3 * D,),
            "diffusion_transformer.blocks.0.adaLN_modulation.1.weight": (6 * D, D),
            "diffusion_transformer.final_layer.linear.weight": (out, D)}
  for name, shape in shapes.items():
    assert sd[name].shape == shape, name
  # The patch embedding is a stride-p Conv2d: its output at the first patch.
  x = np.random.default_rng(0).normal(size=(3, p, p))          # [C, kh, kw]
  conv = np.einsum("dchw,chw->d", sd["diffusion_transformer.x_embedder.proj.weight"], x)
  ours = x.transpose(1, 2, 0).reshape(-1) @ np.asarray(params["patch_w"]).reshape(-1, D)
  np.testing.assert_allclose(ours, conv, rtol=1e-5)
  # timm's fused qkv: rows [k*D + n*H, ...] are (q/k/v k, head n).
  np.testing.assert_array_equal(
      sd["diffusion_transformer.blocks.1.attn.qkv.weight"][D + 8:D + 16].T,
      np.asarray(params["blocks"]["qkv_w"][1, :, 1, 1, :]))
  bad = dict(sd, **{"diffusion_transformer.pos_embed": sd["diffusion_transformer.pos_embed"] + 1})
  with pytest.raises(ConfigError, match="pos_embed differs"):
    import_official(bad, c)


@pytest.mark.slow
def test_video_import_leaves_out_the_frozen_encoder(tmp_path, capsys):
  """`ebt import-torch` of an official video checkpoint (with its frozen VAE's tensors)
  says it leaves them out; `ebt export-torch` writes back the same file minus them."""
  c = _configs()["video_vae"]
  params = _random_params(c)
  sd = collections.OrderedDict(("model." + k, v) for k, v in export_official(params, c).items())
  sd["model.image_encoder.encoder.conv_in.weight"] = np.ones((8, 3, 3, 3), np.float32)
  hparams = {k: v for k, v in oh.to_official_hparams(c).items() if k != "num_gpus"}
  save_torch_file({"state_dict": sd, "hyper_parameters": hparams}, tmp_path / "vid.ckpt")
  assert ebt_jax.cli.main(["import-torch", str(tmp_path / "vid.ckpt"),
                           "--out", str(tmp_path / "run")]) == 0
  assert "1 tensors of the frozen image encoder (image_encoder.*) not imported" in \
      capsys.readouterr().out
  assert ebt_jax.cli.main(["export-torch", "--workdir", str(tmp_path / "run"),
                           "--out", str(tmp_path / "out.ckpt")]) == 0
  back = load_torch_file(tmp_path / "out.ckpt")
  del sd["model.image_encoder.encoder.conv_in.weight"]
  assert list(back["state_dict"]) == list(sd)
  chex.assert_trees_all_equal(dict(back["state_dict"]), {k: np.asarray(v) for k, v in sd.items()})
  assert oh.from_official_hparams(back["hyper_parameters"]).to_dict() == \
      oh.from_official_hparams(hparams).to_dict()
  assert back["global_step"] == 0
  (tmp_path / "a_file").write_text("")
  assert ebt_jax.cli.main(["export-torch", "--workdir", str(tmp_path / "run"),
                           "--out", str(tmp_path / "a_file" / "out.ckpt")]) == 2
  assert "--out: cannot write" in capsys.readouterr().err


def test_configs_without_an_official_counterpart_are_refused():
  c = _configs()["video_vae"]
  c.model.latent_dim = 64
  with pytest.raises(ConfigError, match="model.latent_dim: the official video EBT"):
    oh.to_official_hparams(c)
  c = _configs()["text_ebt"]
  c.thinking.grad_wrt = "logits"
  with pytest.raises(ConfigError, match="thinking.grad_wrt"):
    oh.to_official_hparams(c)


def test_torch_file_format(tmp_path):
  """What torch.load needs: stored members aligned to 64 bytes, byteorder and version
  records, every dtype and shape (0-d, empty, non-contiguous) read back exactly."""
  arrays = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4).T,   # non-contiguous
            "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32),
            "bf16": np.arange(5).astype(ml_dtypes.bfloat16), "i64": np.arange(-3, 3),
            "bool": np.array([True, False]), "u8": np.arange(7, dtype=np.uint8)}
  meta = {"list": [224, 224], "none": None, "big": 2 ** 40, "neg": -7, "f": 0.1, "s": "é",
          "nested": ({"t": True},)}
  save_torch_file({"state_dict": collections.OrderedDict(arrays), "hyper_parameters": meta},
                  tmp_path / "f.pt")
  with zipfile.ZipFile(tmp_path / "f.pt") as z:
    assert z.read("archive/byteorder") == b"little" and z.read("archive/version") == b"3\n"
    for info in z.infolist():
      assert info.compress_type == zipfile.ZIP_STORED
      data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
      assert data_start % 64 == 0, info.filename
  back = load_torch_file(tmp_path / "f.pt")
  assert isinstance(back["state_dict"], collections.OrderedDict)
  assert list(back["state_dict"]) == list(arrays)
  for name, array in arrays.items():
    assert back["state_dict"][name].dtype == array.dtype, name
    np.testing.assert_array_equal(back["state_dict"][name], array)
  assert back["hyper_parameters"] == meta
  with pytest.raises(TypeError, match="cannot write a object"):
    save_torch_file({"x": object()}, tmp_path / "g.pt")


def test_a_torch_file_appears_whole_or_not_at_all(tmp_path, monkeypatch):
  """A write that fails half way (here the second storage) leaves the file it would have
  replaced as it was, and nothing beside it."""
  path = tmp_path / "m.ckpt"
  save_torch_file({"w": np.ones(3, np.float32)}, path)
  before = path.read_bytes()
  real, written = torch_write._write_aligned, []

  def failing(archive, name, data):
    if name == "archive/data/1":
      raise OSError(28, "No space left on device")
    written.append(name)
    real(archive, name, data)

  monkeypatch.setattr(torch_write, "_write_aligned", failing)
  with pytest.raises(OSError, match="No space left"):
    save_torch_file({"a": np.zeros(4, np.float32), "b": np.zeros(5, np.float32)}, path)
  assert "archive/data/0" in written
  assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_bare_state_dict_with_a_job_script(tmp_path, capsys):
  """`ebt import-torch weights.pt --job-script S.sh`: the flags and GPU count from the
  script, the vocabulary from the embedding table."""
  c = tiny_config("default")
  c.model.n_layers = 1
  c.train.batch_size = 8
  c.thinking.replay_buffer_groups = 2
  params = _random_params(c)
  save_torch_file(collections.OrderedDict(export_official(params, c)), tmp_path / "weights.pt")
  script = tmp_path / "ebt_tiny.sh"
  script.write_text("""#SBATCH --gpus-per-node=2
export RUN_NAME="ebt--tiny"
export MODEL_NAME="${RUN_NAME%%-*}"
python train_model.py \\
--modality "NLP" --model_name ${MODEL_NAME} --model_size "" --embedding_dim 16 \\
--num_transformer_blocks 1 --multiheaded_attention_heads 2 --context_length 6 \\
--ebt_type "default" --mcmc_num_steps 2 --mcmc_step_size 2.0 \\
--mcmc_step_size_learnable --mcmc_step_size_lr_multiplier 1500 \\
--normalize_initial_condition --batch_size_per_device 4 --gpus "-1"
""")
  assert ebt_jax.cli.main(["import-torch", str(tmp_path / "weights.pt"), "--job-script",
                           str(script), "--out", str(tmp_path / "run")]) == 0
  config, step, restored = ebt_jax.training.runs.restore_params(tmp_path / "run")
  assert (config.model.vocab_size, config.train.batch_size, step) == (11, 8, 0)
  chex.assert_trees_all_equal(restored, params)
  assert ebt_jax.cli.main(["import-torch", str(tmp_path / "weights.pt"), "--job-script",
                           str(tmp_path / "missing.sh"), "--out", str(tmp_path / "run2")]) == 2
  assert "--job-script: cannot read" in capsys.readouterr().err
