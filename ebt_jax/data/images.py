"""Image and frame-latent sources for the continuous tasks (numpy, deterministic, no download).

Images come out [B, H, W, C] float32 in [-1, 1] (the official ToTensor + Normalize(0.5,
0.5)); frame sequences [B, T, L] float32. Every source is stateless in the step:
`batch(step, batch_size)` depends only on (seed, split, step), so a resumed run needs only
its step, and `batches(start_step)` is the iterator over it.

* `EmbeddedImages`: random crops of scikit-learn's two bundled photographs
  (`load_sample_images`, 427 x 640) resized to the image size, and/or its bundled 8 x 8
  digits (`load_digits`) upscaled to it. The photos are split by columns (validation crops
  come from the right `validation_fraction` of each photo, never seen in training), the
  digits by index.
* `ArraySource` over `image_folder(path, size)` (PNG/JPEG, the official DiT center crop)
  or `npy_array(path)` ([N, H, W, C] images, uint8 or floats in [-1, 1]; or [N, T, L]
  pre-encoded frame latents); `split_array` holds out a fixed validation part.
* `MovingDigits`: a Moving-MNIST-like set built from the bundled digits: `num_digits`
  sprites bouncing on a `canvas` x `canvas` frame, as raw pixels or through a fixed
  random projection to `latent_dim` (the "encoder" of the next-frame task).
* `image_grid` / `save_png`: the clean / noisy / denoised picture of an evaluation.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

SPLITS = ("train", "validation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EMBEDDED_KINDS = ("photos", "digits", "mixed")


def _split_id(split: str) -> int:
  if split not in SPLITS:
    raise ValueError(f"data.split: expected one of {SPLITS}, got {split!r}")
  return SPLITS.index(split)


def _rng(seed: int, split: str, *words: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), _split_id(split), *map(int, words)])


def to_unit_range(pixels_uint8: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return (np.asarray(pixels_uint8, np.float32) / 127.5 - 1.0).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1) * 127.5), 0, 255).astype(np.uint8)


def _pil():
  from PIL import Image
  return Image


def _resize(pixels_uint8: np.ndarray, size: int) -> np.ndarray:
  Image = _pil()
  img = Image.fromarray(pixels_uint8)
  return np.asarray(img.resize((size, size), Image.BICUBIC))


def center_crop_arr(pixels_uint8: np.ndarray, size: int) -> np.ndarray:
  """The official (ADM/DiT) `center_crop_arr`: halve with BOX while the short side is at
  least twice `size`, BICUBIC-resize the short side to `size`, crop the center."""
  Image = _pil()
  img = Image.fromarray(pixels_uint8)
  while min(*img.size) >= 2 * size:
    img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
  scale = size / min(*img.size)
  img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
  arr = np.asarray(img)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  return arr[top:top + size, left:left + size]


# --- embedded images ---------------------------------------------------------------------

def _sklearn_datasets():
  try:
    from sklearn import datasets
  except ImportError:
    raise ImportError("the embedded images and moving digits come from scikit-learn's bundled "
                      "data: pip install 'ebt_jax[images]'") from None
  return datasets


def _sample_photos() -> list[np.ndarray]:
  return [np.asarray(img) for img in _sklearn_datasets().load_sample_images().images]


def _digit_sprites(split: str, validation_fraction: float) -> np.ndarray:
  """The bundled digits of `split` as [N, 8, 8] floats in [0, 1]."""
  digits = _sklearn_datasets().load_digits().images / 16.0
  n_val = int(math.ceil(len(digits) * validation_fraction))
  return digits[len(digits) - n_val:] if split == "validation" else digits[:len(digits) - n_val]


class EmbeddedImages:
  """Random crops of the bundled photos and/or upscaled bundled digits (RGB)."""

  def __init__(self, image_size: int, *, kind: str = "mixed", split: str = "train",
               seed: int = 0, validation_fraction: float = 0.2, max_zoom: float = 8.0):
    if kind not in EMBEDDED_KINDS:
      raise ValueError(f"data.embedded_kind: expected one of {EMBEDDED_KINDS}, got {kind!r}")
    if not 0 < validation_fraction < 1:
      raise ValueError(f"data.validation_fraction: expected (0, 1), got {validation_fraction}")
    if image_size < 1:
      raise ValueError(f"model.image_size: expected >= 1, got {image_size}")
    _split_id(split)
    self.image_size, self.variety, self.split, self.seed = image_size, kind, split, seed
    self.max_zoom = max_zoom
    self._regions = []
    if kind != "digits":
      for photo in _sample_photos():
        cut = int(round(photo.shape[1] * (1 - validation_fraction)))
        region = photo[:, cut:] if split == "validation" else photo[:, :cut]
        if min(region.shape[:2]) < image_size:
          raise ValueError(f"model.image_size {image_size} exceeds the {split} region "
                           f"{region.shape[:2]} of the embedded photos")
        self._regions.append(region)
    self._digits = None if kind == "photos" else _digit_sprites(split, validation_fraction)

  def _photo_crop(self, rng: np.random.Generator) -> np.ndarray:
    region = self._regions[int(rng.integers(len(self._regions)))]
    H, W = region.shape[:2]
    largest = min(H, W, int(self.image_size * self.max_zoom))
    side = int(rng.integers(self.image_size, largest + 1))
    top, left = int(rng.integers(H - side + 1)), int(rng.integers(W - side + 1))
    crop = region[top:top + side, left:left + side]
    return crop if side == self.image_size else _resize(crop, self.image_size)

  def _digit(self, rng: np.random.Generator) -> np.ndarray:
    sprite = self._digits[int(rng.integers(len(self._digits)))]
    gray = _resize(np.round(sprite * 255).astype(np.uint8), self.image_size)
    return np.repeat(gray[..., None], 3, axis=-1)

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    rng = _rng(self.seed, self.split, step)
    out = []
    for _ in range(batch_size):
      use_digit = self.variety == "digits" or (self.variety == "mixed" and rng.random() < 0.5)
      out.append(self._digit(rng) if use_digit else self._photo_crop(rng))
    return to_unit_range(np.stack(out))

  def batches(self, batch_size: int, start_step: int = 0) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step, batch_size)
      step += 1


# --- arrays from files -------------------------------------------------------------------

def _require_path(path: str, field: str) -> str:
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise ValueError(f"{field}: {path!r} does not exist")
  return path


def image_folder(path: str, image_size: int, field: str = "data.path") -> np.ndarray:
  """Every PNG/JPEG under `path` (recursively, sorted), center-cropped to `image_size`,
  as uint8 [N, size, size, 3]."""
  path = _require_path(path, field)
  if not os.path.isdir(path):
    raise ValueError(f"{field}: {path!r} is not a folder of images")
  files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                 if f.lower().endswith(IMAGE_SUFFIXES))
  if not files:
    raise ValueError(f"{field}: no {'/'.join(IMAGE_SUFFIXES)} images under {path!r}")
  Image = _pil()
  out = []
  for f in files:
    try:
      with Image.open(f) as img:
        pixels = np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt or mislabelled files
      raise ValueError(f"{field}: cannot read image {f!r}: {e}") from None
    out.append(center_crop_arr(pixels, image_size))
  return np.stack(out)


def npy_array(path: str, kind: str = "images", field: str = "data.path") -> np.ndarray:
  """A .npy array, memory-mapped: `images` [N, H, W, C] (C 1 or 3; uint8, or floats in
  [-1, 1]) or `latents` [N, T, L] frame sequences (floats)."""
  path = _require_path(path, field)
  try:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
  except Exception as e:
    raise ValueError(f"{field}: {path!r} is not a readable .npy array: {e}") from None
  if kind == "images":
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
      raise ValueError(f"{field}: {path!r} has shape {arr.shape}; expected images "
                       f"[N, H, W, C] with C 1 or 3")
    if arr.dtype != np.uint8:
      if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{field}: {path!r} has dtype {arr.dtype}; expected uint8 or float")
      lo, hi = float(np.min(arr)), float(np.max(arr))
      if lo < -1.001 or hi > 1.001:
        raise ValueError(f"{field}: {path!r} float images span [{lo:.3g}, {hi:.3g}]; "
                         f"expected [-1, 1] (or store uint8 pixels)")
  elif kind == "latents":
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating):
      raise ValueError(f"{field}: {path!r} has shape {arr.shape} and dtype {arr.dtype}; "
                       f"expected float frame latents [N, T, L]")
  else:
    raise ValueError(f"npy_array: kind must be 'images' or 'latents', got {kind!r}")
  return arr


def split_array(arr: np.ndarray, split: str, validation_fraction: float,
                seed: int = 0) -> np.ndarray:
  """The `split` part of `arr` under a fixed seeded permutation (validation: the first
  ceil(N * fraction) of it, at least one, and training the rest)."""
  _split_id(split)
  n = len(arr)
  n_val = max(1, int(math.ceil(n * validation_fraction)))
  if n_val >= n:
    raise ValueError(f"data.validation_fraction {validation_fraction}: {n} examples leave "
                     f"none for training")
  order = np.random.default_rng([int(seed), 7]).permutation(n)
  idx = np.sort(order[:n_val] if split == "validation" else order[n_val:])
  return arr[idx]


class ArraySource:
  """Batches from an in-memory (or memory-mapped) array [N, ...], reshuffled every epoch.
  uint8 images become float32 [-1, 1]; floats pass as float32."""

  def __init__(self, array: np.ndarray, *, split: str = "train", seed: int = 0,
               shuffle: bool = True):
    if len(array) == 0:
      raise ValueError("data: the array source is empty")
    _split_id(split)
    self.array, self.split, self.seed, self.shuffle = array, split, seed, shuffle

  def __len__(self) -> int:
    return len(self.array)

  def _convert(self, x: np.ndarray) -> np.ndarray:
    return to_unit_range(x) if x.dtype == np.uint8 else np.asarray(x, np.float32)

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    n = len(self.array)
    positions = step * batch_size + np.arange(batch_size)
    epochs, offsets = positions // n, positions % n
    idx = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      order = (_rng(self.seed, self.split, epoch).permutation(n) if self.shuffle
               else np.arange(n))
      idx[epochs == epoch] = order[offsets[epochs == epoch]]
    return self._convert(np.asarray(self.array[idx]))

  def batches(self, batch_size: int, start_step: int = 0) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step, batch_size)
      step += 1


# --- moving digits -----------------------------------------------------------------------

def _bounce(pos: np.ndarray, vel: np.ndarray, limit: float):
  """Reflects positions that left [0, limit] back inside and reverses their velocity."""
  over, under = pos > limit, pos < 0
  pos = np.where(over, 2 * limit - pos, np.where(under, -pos, pos))
  return np.clip(pos, 0, limit), np.where(over | under, -vel, vel)


class MovingDigits:
  """Moving-MNIST-like sequences from the bundled digits, as frames or frame latents.

  Each sequence has `num_digits` digits (8 x 8 upscaled to `digit_size`) starting at
  uniform positions with uniform directions and speeds in [1, max_speed] pixels per
  frame, bouncing off the edges; overlapping digits take the maximum. Frames are
  [canvas, canvas] in [-1, 1]; `latents` flattens them ([T, canvas^2], `latent_dim` None)
  or multiplies by a fixed N(0, 1 / canvas^2) matrix seeded by `projection_seed` (the same
  for both splits) to [T, latent_dim].
  """

  def __init__(self, *, frames: int = 9, canvas: int = 32, digit_size: int = 16,
               num_digits: int = 2, max_speed: float = 3.0, latent_dim: int | None = None,
               split: str = "train", seed: int = 0, validation_fraction: float = 0.2,
               projection_seed: int = 0):
    if not 0 < digit_size <= canvas:
      raise ValueError(f"data.digit_size: expected 1..canvas ({canvas}), got {digit_size}")
    if frames < 2:
      raise ValueError(f"data.frames: next-frame prediction needs >= 2 frames, got {frames}")
    if num_digits < 1:
      raise ValueError(f"data.num_digits: expected >= 1, got {num_digits}")
    if latent_dim is not None and latent_dim < 1:
      raise ValueError(f"data.latent_dim: expected >= 1 or None, got {latent_dim}")
    _split_id(split)
    self.frames_per_sequence, self.canvas, self.digit_size = frames, canvas, digit_size
    self.num_digits, self.max_speed, self.latent_dim = num_digits, max_speed, latent_dim
    self.split, self.seed = split, seed
    sprites = _digit_sprites(split, validation_fraction)
    self._sprites = np.stack([_resize(np.round(s * 255).astype(np.uint8), digit_size)
                              for s in sprites]).astype(np.float32) / 255.0
    self._projection = None
    if latent_dim is not None:
      P = canvas * canvas
      proj_rng = np.random.default_rng([int(projection_seed), 11])
      self._projection = (proj_rng.standard_normal((P, latent_dim)) / math.sqrt(P)).astype(
          np.float32)

  @property
  def feature_dim(self) -> int:
    return self.canvas * self.canvas if self.latent_dim is None else self.latent_dim

  def frames(self, step: int, batch_size: int) -> np.ndarray:
    """[B, T, canvas, canvas] float32 in [-1, 1]."""
    rng = _rng(self.seed, self.split, step)
    B, T, N, ds = batch_size, self.frames_per_sequence, self.num_digits, self.digit_size
    limit = self.canvas - ds
    which = rng.integers(len(self._sprites), size=(B, N))
    pos = rng.uniform(0, limit, size=(B, N, 2))
    angle = rng.uniform(0, 2 * np.pi, size=(B, N))
    speed = rng.uniform(1, self.max_speed, size=(B, N))
    vel = np.stack([np.sin(angle), np.cos(angle)], -1) * speed[..., None]
    out = np.zeros((B, T, self.canvas, self.canvas), np.float32)
    for t in range(T):
      corner = np.round(pos).astype(int)
      for b in range(B):
        for n in range(N):
          r, c = corner[b, n]
          view = out[b, t, r:r + ds, c:c + ds]
          np.maximum(view, self._sprites[which[b, n]], out=view)
      pos, vel = _bounce(pos + vel, vel, limit)
    return out * 2 - 1

  def latents(self, frames_BxTxHxW: np.ndarray) -> np.ndarray:
    B, T = frames_BxTxHxW.shape[:2]
    flat = frames_BxTxHxW.reshape(B, T, -1)
    return flat if self._projection is None else flat @ self._projection

  def batch(self, step: int, batch_size: int) -> np.ndarray:
    """[B, T, feature_dim] float32 frame latents."""
    return self.latents(self.frames(step, batch_size)).astype(np.float32)

  def batches(self, batch_size: int, start_step: int = 0) -> Iterator[np.ndarray]:
    step = start_step
    while True:
      yield self.batch(step, batch_size)
      step += 1


# --- pictures ----------------------------------------------------------------------------

def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
  """Rows of [N, H, W, C] images in [-1, 1] (e.g. clean, noisy, denoised) as one uint8
  picture, `pad` white pixels between cells."""
  if not rows:
    raise ValueError("image_grid: no rows")
  n = max(len(r) for r in rows)
  H, W, C = np.asarray(rows[0]).shape[1:]
  grid = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, C), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(to_uint8(np.asarray(row))):
      top, left = pad + i * (H + pad), pad + j * (W + pad)
      grid[top:top + H, left:left + W] = img
  return grid[..., 0] if C == 1 else grid


def save_png(path: str, pixels_uint8: np.ndarray) -> None:
  _pil().fromarray(pixels_uint8).save(path, format="PNG")
