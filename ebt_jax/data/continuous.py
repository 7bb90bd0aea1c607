"""The trainer's datasets for the image and video kinds: `make_datasets` for continuous data.

The result has the text `Datasets`' interface (`train_iter`, `eval_batches`,
`eval_splits`), so the trainer does not know which it reads. Sources (data/images.py), selected by `data.source`:

* `embedded_images`: crops of scikit-learn's bundled photos and/or digits (no download);
* `image_folder` (`data.path`: PNG/JPEG files, center-cropped to `model.image_size`, read
  into memory) and `image_npy` (`data.path`: [N, H, W, C], memory-mapped; H = W =
  image_size), split into train/validation by a fixed seeded permutation;
* `moving_digits`: Moving-MNIST-like sequences of `context_length + 1` frames through a
  fixed random projection to `model.latent_dim` (or raw pixels);
* `latent_npy` (`data.path`: pre-encoded frame latents [N, T, L], memory-mapped): windows
  of `context_length + 1` consecutive frames (a random offset per training example, the
  first frames in validation).

Every source is stateless in the step (`batch(step, batch_size)` is a pure function of
data.seed, split and step), so the training iterator's checkpointed state is its step plus
a fingerprint that refuses a different seed, global batch or source. Batch t of the run is
the source's batch (t, global batch); process p takes its rows p*B .. (p+1)*B - 1, so the
global batch does not depend on the process count. Validation batches are batches 0..n-1
of the validation source with seed 0: fixed, and the same for any data.seed. Image kinds
evaluate the same clean images at the training and the out-of-distribution noise level
(`tasks/image.py`), so every image split reads the validation images.
"""

from __future__ import annotations

import jax
import numpy as np

from ebt_jax.errors import ConfigError, check
from ebt_jax.data import images
from ebt_jax.data.iterators import StepBatches

IMAGE_SOURCES = ("embedded_images", "image_folder", "image_npy")
LATENT_SOURCES = ("moving_digits", "latent_npy")
SOURCES = IMAGE_SOURCES + LATENT_SOURCES
_EVAL_SEED = 0


class FrameWindows:
  """`frames` consecutive frames of each sequence of a [N, T, L] array source."""

  def __init__(self, source: images.ArraySource, frames: int, *, split: str, seed: int):
    self.source, self.frames, self.split, self.seed = source, frames, split, seed
    self.length = source.array.shape[1]

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    seqs = self.source.batch(step, batch_size)
    if self.split == "validation" or self.length == self.frames:
      return seqs[:, :self.frames]
    rng = np.random.default_rng([int(self.seed), 5, int(step)])
    starts = rng.integers(0, self.length - self.frames + 1, size=batch_size)
    return np.stack([s[o:o + self.frames] for s, o in zip(seqs, starts)])


def _read_array(config) -> np.ndarray | None:
  """The whole array of a file source (read once for both splits), checked against the
  model; None for the generated sources."""
  d, m = config.data, config.model
  if d.source == "image_folder":
    check(m.image_channels == 3, "model.image_channels", "3 (image_folder reads RGB)",
          m.image_channels)
    return images.image_folder(d.path, m.image_size)
  if d.source == "image_npy":
    array = images.npy_array(d.path, "images")
    shape, want = tuple(array.shape[1:]), (m.image_size, m.image_size, m.image_channels)
    check(shape == want, "data.path", f"images of shape [N, {', '.join(map(str, want))}] "
          f"(model.image_size, model.image_channels)", f"[N, {', '.join(map(str, shape))}]")
    return array
  if d.source == "latent_npy":
    array = images.npy_array(d.path, "latents")
    check(array.shape[2] == m.latent_dim, "model.latent_dim",
          f"the latent width of data.path ({array.shape[2]})", m.latent_dim)
    check(array.shape[1] >= m.context_length + 1, "model.context_length",
          f"at most {array.shape[1] - 1} (data.path has {array.shape[1]} frames per sequence)",
          m.context_length)
    return array
  return None


def _source(config, array: np.ndarray | None, split: str, seed: int):
  d, m = config.data, config.model
  if array is not None:
    part = images.ArraySource(images.split_array(array, split, d.validation_fraction, d.seed),
                              split=split, seed=seed, shuffle=split == "train")
    if d.source == "latent_npy":
      return FrameWindows(part, m.context_length + 1, split=split, seed=seed)
    return part
  if d.source == "embedded_images":
    check(m.image_channels == 3, "model.image_channels", "3 (the embedded images are RGB)",
          m.image_channels)
    return images.EmbeddedImages(m.image_size, kind=d.embedded_kind, split=split, seed=seed,
                                 validation_fraction=d.validation_fraction, max_zoom=d.max_zoom)
  md = d.moving_digits
  if not md.project:
    check(m.latent_dim == md.canvas ** 2, "model.latent_dim",
          f"data.moving_digits.canvas^2 = {md.canvas ** 2} (raw pixels, project=False)",
          m.latent_dim)
  return images.MovingDigits(
      frames=m.context_length + 1, canvas=md.canvas, digit_size=md.digit_size,
      num_digits=md.num_digits, max_speed=md.max_speed,
      latent_dim=m.latent_dim if md.project else None, split=split, seed=seed,
      validation_fraction=d.validation_fraction, projection_seed=md.projection_seed)


class StepIterator(StepBatches):
  """Endless training batches of a stateless source; its state is the step (checkpointable)."""

  def __init__(self, source, batch_size: int, process_index: int, process_count: int,
               fingerprint: dict):
    self._source = source
    self._rows = slice(process_index * batch_size, (process_index + 1) * batch_size)
    self._global_batch = batch_size * process_count
    super().__init__({**fingerprint, "global_batch_size": self._global_batch})

  def _make_batch(self, step: int) -> np.ndarray:
    return self._source.batch(int(step), self._global_batch)[self._rows]



class ContinuousDatasets:
  """Training and validation sources of images or frame latents (see the module docstring)."""

  def __init__(self, config, train_source, validation_source, eval_splits: tuple[str, ...]):
    self.config = config
    self.seed = config.data.seed
    self.eval_splits = eval_splits
    self._train, self._validation = train_source, validation_source

  def train_iter(self, batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None) -> StepIterator:
    """`batch_size` is this process's share of the global batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
      raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    fingerprint = {"seed": self.seed, "source": self.config.data.source}
    return StepIterator(self._train, int(batch_size), int(process_index), int(process_count),
                        fingerprint)

  def eval_batches(self, split: str, batch_size: int, num_batches: int) -> list[np.ndarray]:
    if split not in self.eval_splits:
      raise KeyError(f"unknown split {split!r}; have {self.eval_splits}")
    return [self._validation.batch(i, batch_size) for i in range(num_batches)]


def validate(config, sources: tuple[str, ...], model: str) -> None:
  """`data.source` must be one of `sources`, those that feed `model` (as errors name it)."""
  source = config.data.source
  check(source in sources, "data.source", f"one of {sources} for {model}", source)
  if source in ("image_folder", "image_npy", "latent_npy"):
    check(isinstance(config.data.path, str) and config.data.path != "", "data.path",
          f"a path (data.source={source!r})", config.data.path)
  if source == "embedded_images":
    check(config.data.embedded_kind in images.EMBEDDED_KINDS, "data.embedded_kind",
          f"one of {images.EMBEDDED_KINDS}", config.data.embedded_kind)
    check(config.data.max_zoom >= 1, "data.max_zoom", "a number >= 1", config.data.max_zoom)
  check(not tuple(config.data.ood_suites), "data.ood_suites",
        f"none for {model} (image runs evaluate out of distribution at "
        f"denoise.ood_noise_level)", config.data.ood_suites)
  if source == "moving_digits":
    md = config.data.moving_digits
    for field in ("canvas", "digit_size", "num_digits"):
      check(isinstance(md[field], int) and md[field] >= 1, f"data.moving_digits.{field}",
            "a positive integer", md[field])
    check(md.digit_size <= md.canvas, "data.moving_digits.digit_size",
          f"at most data.moving_digits.canvas={md.canvas}", md.digit_size)
    check(md.max_speed >= 1, "data.moving_digits.max_speed", "a number >= 1 (pixels per frame)",
          md.max_speed)


def make_datasets(config, sources: tuple[str, ...], eval_splits: tuple[str, ...],
                  model: str) -> ContinuousDatasets:
  """The training and validation sources of `config.data.source`, which must be one of
  `sources` (those that feed `model`); `eval_splits` name what evaluation reports (every
  split reads the validation source). Every error is here."""
  validate(config, sources, model)
  try:
    array = _read_array(config)
    return ContinuousDatasets(config, _source(config, array, "train", config.data.seed),
                              _source(config, array, "validation", _EVAL_SEED), eval_splits)
  except ConfigError:
    raise
  except ValueError as e:   # data/images.py's errors already name the field
    raise ConfigError(str(e)) from None
