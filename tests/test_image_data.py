"""Image and frame-latent sources: shapes, ranges, determinism, splits, clear errors."""

import numpy as np
import pytest
from PIL import Image

from ebt_jax.data import images


@pytest.mark.parametrize("kind", images.EMBEDDED_KINDS)
def test_embedded_images_are_deterministic_and_in_range(kind):
  src = images.EmbeddedImages(16, kind=kind, seed=3)
  a = src.batch(5, 4)
  assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
  assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.05
  np.testing.assert_array_equal(images.EmbeddedImages(16, kind=kind, seed=3).batch(5, 4), a)
  assert not np.array_equal(src.batch(6, 4), a)
  assert not np.array_equal(images.EmbeddedImages(16, kind=kind, seed=4).batch(5, 4), a)
  val = images.EmbeddedImages(16, kind=kind, seed=3, split="validation").batch(5, 4)
  assert val.shape == a.shape and not np.array_equal(val, a)
  it = src.batches(4, start_step=5)
  np.testing.assert_array_equal(next(it), a)


def test_embedded_validation_photos_come_from_held_out_columns():
  train = images.EmbeddedImages(16, kind="photos")
  val = images.EmbeddedImages(16, kind="photos", split="validation")
  photo_width = images._sample_photos()[0].shape[1]
  assert all(r.shape[1] == 512 for r in train._regions) and photo_width == 640
  assert all(r.shape[1] == 128 for r in val._regions)
  with pytest.raises(ValueError, match="model.image_size 200 exceeds the validation region"):
    images.EmbeddedImages(200, kind="photos", split="validation")
  with pytest.raises(ValueError, match="data.embedded_kind"):
    images.EmbeddedImages(16, kind="faces")
  with pytest.raises(ValueError, match="data.split"):
    images.EmbeddedImages(16, split="test")


def _write_images(folder, sizes):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(sizes):
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    suffix = ".png" if i % 2 == 0 else ".JPG"
    Image.fromarray(pixels).save(folder / f"img{i}{suffix}")


def test_image_folder_center_crops_every_image(tmp_path):
  _write_images(tmp_path / "a", [(20, 30), (40, 24)])
  _write_images(tmp_path / "a" / "sub", [(64, 64)])
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  arr = images.image_folder(str(tmp_path / "a"), 16)
  assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
  np.testing.assert_array_equal(images.image_folder(str(tmp_path / "a"), 16), arr)
  src = images.ArraySource(arr, seed=1)
  batch = src.batch(0, 2)
  assert batch.shape == (2, 16, 16, 3) and batch.dtype == np.float32
  assert -1 <= batch.min() and batch.max() <= 1


def test_image_folder_errors_name_the_path(tmp_path):
  with pytest.raises(ValueError, match=r"data.path: '.*missing' does not exist"):
    images.image_folder(str(tmp_path / "missing"), 16)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"data.path: no .png/.jpg/.jpeg images under '.*empty'"):
    images.image_folder(str(tmp_path / "empty"), 16)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"data.path: cannot read image '.*broken.png'"):
    images.image_folder(str(tmp_path / "bad"), 16)
  (tmp_path / "file.png").write_bytes(b"")
  with pytest.raises(ValueError, match="is not a folder of images"):
    images.image_folder(str(tmp_path / "file.png"), 16)


def test_npy_sources_and_their_errors(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
  np.save(tmp_path / "px.npy", pixels)
  arr = images.npy_array(str(tmp_path / "px.npy"))
  np.testing.assert_allclose(images.ArraySource(arr, shuffle=False).batch(1, 3),
                             pixels[3:6] / 127.5 - 1, atol=1e-6)
  np.save(tmp_path / "lat.npy", np.zeros((4, 5, 7), np.float32))
  assert images.npy_array(str(tmp_path / "lat.npy"), "latents").shape == (4, 5, 7)
  np.save(tmp_path / "wide.npy", np.full((2, 4, 4, 3), 3.0, np.float32))
  np.save(tmp_path / "flat.npy", np.zeros((4, 5), np.float32))
  (tmp_path / "junk.npy").write_bytes(b"junk")
  cases = [("missing.npy", "images", "does not exist"),
           ("wide.npy", "images", r"float images span \[3, 3\]; expected \[-1, 1\]"),
           ("flat.npy", "images", r"has shape \(4, 5\); expected images \[N, H, W, C\]"),
           ("flat.npy", "latents", r"expected float frame latents \[N, T, L\]"),
           ("junk.npy", "images", "is not a readable .npy array")]
  for name, kind, message in cases:
    with pytest.raises(ValueError, match=f"data.path: '.*{name}' " + ".*" + message):
      images.npy_array(str(tmp_path / name), kind)


def test_splits_are_disjoint_and_epochs_cover_the_data():
  arr = np.arange(20)[:, None].astype(np.float32)
  train = images.split_array(arr, "train", 0.2)
  val = images.split_array(arr, "validation", 0.2)
  assert len(val) == 4 and len(train) == 16
  assert set(train[:, 0]).isdisjoint(val[:, 0])
  assert set(train[:, 0]) | set(val[:, 0]) == set(range(20))
  np.testing.assert_array_equal(images.split_array(arr, "validation", 0.2), val)
  src = images.ArraySource(train, seed=0)
  epoch = np.concatenate([src.batch(s, 4)[:, 0] for s in range(4)])
  assert sorted(epoch) == sorted(train[:, 0])
  np.testing.assert_array_equal(src.batch(2, 4), images.ArraySource(train, seed=0).batch(2, 4))
  with pytest.raises(ValueError, match="leave none for training"):
    images.split_array(arr[:1], "train", 0.5)


def test_moving_digits_move_bounce_and_project():
  src = images.MovingDigits(frames=6, canvas=20, digit_size=8, num_digits=2, seed=1)
  frames = src.frames(0, 3)
  assert frames.shape == (3, 6, 20, 20) and frames.min() >= -1 and frames.max() <= 1
  np.testing.assert_array_equal(images.MovingDigits(frames=6, canvas=20, digit_size=8,
                                                    seed=1).frames(0, 3), frames)
  assert not np.array_equal(frames[:, 0], frames[:, 1])           # the digits move
  assert np.all((frames + 1).reshape(3, 6, -1).sum(-1) > 0)        # and stay in view
  raw = src.batch(0, 3)
  assert raw.shape == (3, 6, 400)
  np.testing.assert_array_equal(raw, frames.reshape(3, 6, 400))
  proj = images.MovingDigits(frames=6, canvas=20, digit_size=8, seed=1, latent_dim=16)
  latents = proj.batch(0, 3)
  assert latents.shape == (3, 6, 16) and proj.feature_dim == 16
  np.testing.assert_allclose(latents, raw @ proj._projection, rtol=1e-5)
  val = images.MovingDigits(frames=6, canvas=20, digit_size=8, seed=1, latent_dim=16,
                            split="validation")
  np.testing.assert_array_equal(val._projection, proj._projection)  # one fixed encoder
  assert not np.array_equal(val.batch(0, 3), latents)
  with pytest.raises(ValueError, match="data.digit_size"):
    images.MovingDigits(canvas=8, digit_size=16)


def test_grid_and_png(tmp_path):
  rows = [np.zeros((3, 4, 4, 3)), np.ones((2, 4, 4, 3))]
  grid = images.image_grid(rows, pad=1)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 128 and grid[6, 1, 0] == 255
  images.save_png(str(tmp_path / "grid.png"), grid)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid)
  assert images.center_crop_arr(np.zeros((300, 100, 3), np.uint8), 32).shape == (32, 32, 3)
