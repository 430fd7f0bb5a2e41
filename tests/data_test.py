"""Data: synthetic set, on-device augmentation, TFDS ArrayRecord reading (self-written and cifar10_jpeg)."""

import os

import jax
import numpy as np
import pytest

from configs import default
from rpat_jax import data


def test_synthetic_is_deterministic_balanced_and_learnable():
  a, b = data.make_synthetic(2000, 500, 16, 10, seed=3), data.make_synthetic(2000, 500, 16, 10, seed=3)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  assert a.train_images.shape == (2000, 16, 16, 3) and a.train_images.dtype == np.uint8
  assert a.test_labels.dtype == np.int32 and set(np.unique(a.train_labels)) == set(range(10))
  assert not np.array_equal(a.train_images, data.make_synthetic(2000, 500, 16, 10, seed=4).train_images)
  # A nearest-class-mean classifier is far above chance, yet far from perfect (shifts and noise).
  flat = lambda v: v.reshape(len(v), -1).astype(np.float32)
  means = np.stack([flat(a.train_images)[a.train_labels == k].mean(0) for k in range(10)])
  distances = ((flat(a.test_images)[:, None] - means[None]) ** 2).sum(-1)
  accuracy = np.mean(distances.argmin(1) == a.test_labels)
  assert 0.3 < accuracy < 0.98, accuracy


def _reference_crop(image, offset, padding, mode, flipped):
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
  crop = padded[offset[0]:offset[0] + image.shape[0], offset[1]:offset[1] + image.shape[1]]
  return crop[:, ::-1] if flipped else crop


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_crop_flip_is_a_padded_crop_reproducible_from_the_key(mode):
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  augment = jax.jit(lambda k, x: data.random_crop_flip(k, x, padding=2, pad_mode=mode))
  out = np.asarray(augment(jax.random.key(0), images))
  assert out.shape == images.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
  np.testing.assert_array_equal(out, augment(jax.random.key(0), images))
  assert not np.array_equal(out, augment(jax.random.key(1), images))
  source = images.astype(np.float32) / 255
  for i in range(len(images)):  # Each output is one of the (2p+1)^2 crops, flipped or not.
    candidates = [_reference_crop(source[i], (r, c), 2, mode, f) for r in range(5) for c in range(5)
                  for f in (False, True)]
    assert any(np.allclose(out[i], c) for c in candidates), i


def test_no_padding_no_flip_is_the_identity():
  images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  out = data.random_crop_flip(jax.random.key(0), images, padding=0, flip=False)
  np.testing.assert_array_equal(out, images.astype(np.float32) / 255)


def _write_array_record_dataset(data_dir):
  """A 4-class, 8x8 ArrayRecord TFDS dataset built without TensorFlow; returns its arrays."""
  import tensorflow_datasets as tfds
  rng = np.random.default_rng(0)
  arrays = {'train': (rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 64)),
            'test': (rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 32))}

  class TinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8), 'label': tfds.features.ClassLabel(num_classes=4)}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(split) for split in arrays}

    def _generate_examples(self, split):
      images, labels = arrays[split]
      for i in range(len(labels)):
        yield i, {'image': images[i], 'label': int(labels[i])}

  TinyImages(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return arrays


def _by_content(images):
  return np.argsort([image.tobytes() for image in images])


def test_reads_a_tfds_array_record_dataset_and_caches_it(tmp_path):
  arrays = _write_array_record_dataset(tmp_path / 'tfds')
  config = default.get_config().data
  config.name, config.data_dir, config.cache_dir = 'tiny_images', str(tmp_path / 'tfds'), str(tmp_path / 'cache')
  assert data.dataset_available('tiny_images', config.data_dir)
  dataset = data.load_dataset(config)
  for (images, labels), (expected_images, expected_labels) in (
      ((dataset.train_images, dataset.train_labels), arrays['train']),
      ((dataset.test_images, dataset.test_labels), arrays['test'])):
    # TFDS stores examples in a hashed order: compare as sets of (image, label) pairs.
    got, want = _by_content(images), _by_content(expected_images)
    np.testing.assert_array_equal(images[got], expected_images[want])
    np.testing.assert_array_equal(labels[got], expected_labels[want])
  assert dataset.num_classes == 4 and dataset.train_labels.dtype == np.int32
  assert len(os.listdir(tmp_path / 'cache')) == 2
  cached = data.load_dataset(config)
  np.testing.assert_array_equal(cached.train_images, dataset.train_images)


def test_a_missing_dataset_says_how_to_prepare_it(tmp_path):
  config = default.get_config().data
  config.name, config.data_dir = 'cifar100', str(tmp_path)
  assert not data.dataset_available('cifar100', str(tmp_path))
  with pytest.raises(data.DatasetNotFoundError, match='python -m rpat_jax.data.prepare cifar100 --data_dir='):
    data.load_dataset(config)
  config.name = 'svhn_cropped'  # Other catalog datasets: TFDS's own build, once, with TensorFlow.
  with pytest.raises(data.DatasetNotFoundError, match='tfds build svhn_cropped --file_format=array_record'):
    data.load_dataset(config)


@pytest.mark.skipif(not os.environ.get('RPAT_TFDS_DIR'), reason='RPAT_TFDS_DIR (a data_dir with cifar10_jpeg) unset')
def test_cifar10_jpeg(tmp_path):
  """The real (JPEG) CIFAR-10 copy: split sizes and classes from its metadata, and 5,000 training rows
  and 1,000 test rows read in the order asked (the whole-split decode and cache are tested above)."""
  config = default.get_config().data
  config.name, config.data_dir, config.cache_dir = 'cifar10_jpeg', os.environ['RPAT_TFDS_DIR'], str(tmp_path)
  info = data.describe(config)
  assert (info.num_train, info.num_test, info.image_shape, info.num_classes) == (50000, 10000, (32, 32, 3), 10)
  rows = np.random.default_rng(0).choice(50000, 5000, replace=False)
  images, labels = data.load_rows(config, 'train', rows)
  assert images.shape == (5000, 32, 32, 3) and images.dtype == np.uint8 and 0 < images.mean() < 255
  counts = np.bincount(labels, minlength=10)
  assert counts.shape == (10,) and counts.min() > 400  # A balanced dataset: 500 of each class expected.
  again, again_labels = data.load_rows(config, 'train', rows[::-1])
  np.testing.assert_array_equal(again, images[::-1])
  np.testing.assert_array_equal(again_labels, labels[::-1])
  test_images, test_labels = data.load_rows(config, 'test', np.arange(1000))
  assert test_images.shape == (1000, 32, 32, 3) and set(np.unique(test_labels)) == set(range(10))


def _fake_tiny_imagenet(root, rng):
  """A tiny-imagenet-200 layout: 3 classes x 4 train images (one grayscale), 6 val images."""
  from PIL import Image
  wnids = ['n03', 'n01', 'n02']  # Unsorted on purpose: labels follow the sorted order.
  os.makedirs(root / 'val' / 'images')
  (root / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
  pixels = {}
  for wnid in wnids:
    os.makedirs(root / 'train' / wnid / 'images')
    for i in range(4):
      mode = 'L' if (wnid, i) == ('n02', 0) else 'RGB'
      shape = (64, 64) if mode == 'L' else (64, 64, 3)
      path = root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG'
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, quality=90)
      pixels[path.name] = np.asarray(Image.open(path).convert('RGB'))
  lines = []
  for i in range(6):
    path = root / 'val' / 'images' / f'val_{i}.JPEG'
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    pixels[path.name] = np.asarray(Image.open(path).convert('RGB'))
    lines.append(f'val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t63\t63')
  (root / 'val' / 'val_annotations.txt').write_text('\n'.join(lines) + '\n')
  return pixels


def test_tiny_imagenet_is_prepared_from_its_folder_and_read_like_any_tfds_dataset(tmp_path):
  from rpat_jax.data import tiny_imagenet
  pixels = _fake_tiny_imagenet(tmp_path / 'tiny-imagenet-200', np.random.default_rng(0))
  tiny_imagenet.prepare(str(tmp_path / 'tiny-imagenet-200'), str(tmp_path / 'tfds'))
  config = default.get_config().data
  config.name, config.data_dir, config.cache_dir = 'tiny_imagenet', str(tmp_path / 'tfds'), str(tmp_path / 'cache')
  dataset = data.load_dataset(config)
  assert dataset.train_images.shape == (12, 64, 64, 3) and dataset.test_images.shape == (6, 64, 64, 3)
  assert dataset.num_classes == 3
  by_image = {image.tobytes(): label for image, label in zip(dataset.train_images, dataset.train_labels)}
  for name, image in pixels.items():  # The decoded pixels (gray -> 3 channels) and sorted-wnid labels.
    if name.startswith('n0'):
      assert by_image[image.tobytes()] == {'n01': 0, 'n02': 1, 'n03': 2}[name[:3]], name
  test_by_image = {image.tobytes(): label for image, label in zip(dataset.test_images, dataset.test_labels)}
  for i in range(6):
    assert test_by_image[pixels[f'val_{i}.JPEG'].tobytes()] == {'n03': 2, 'n01': 0, 'n02': 1}[['n03', 'n01', 'n02'][i % 3]]
