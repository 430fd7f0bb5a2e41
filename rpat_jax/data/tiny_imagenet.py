"""Tiny-ImageNet (64x64, 200 classes) as a TFDS ArrayRecord dataset, prepared without TensorFlow from
the standard `tiny-imagenet-200` folder; Tiny-ImageNet is not in the TFDS catalog.

  python -m rpat_jax.data.tiny_imagenet --source=/data/tiny-imagenet-200 --data_dir=~/tensorflow_datasets
  python -m rpat_jax.main --config=configs/prn18.py --workdir=runs/tin \
      --config.data.name=tiny_imagenet --config.data.data_dir=~/tensorflow_datasets

Splits as the official code reads them (`tiny_pre.py` + torchvision `ImageFolder`): train =
train/<wnid>/images/*.JPEG (100,000 images), test = val/images with the labels of val_annotations.txt
(10,000); label k = the k-th wnid of wnids.txt in sorted order (ImageFolder sorts class folders). The
images keep their original JPEG bytes; the few grayscale ones decode to three equal channels, as PIL's
convert('RGB') that ImageFolder applies.
"""

import functools
import os
import sys
import types
from typing import Dict, List, Tuple

from absl import app
from absl import flags

from rpat_jax.data import arrayrecord

IMAGE_SIZE = 64
VERSION = '1.0.0'


def read_layout(source_dir: str) -> Tuple[List[str], Dict[str, List[Tuple[str, int]]]]:
  """(sorted wnids, {'train': [(path, label)], 'test': [(path, label)]}) of a tiny-imagenet-200 folder."""
  wnids_file = os.path.join(source_dir, 'wnids.txt')
  if not os.path.exists(wnids_file):
    raise FileNotFoundError(f'{source_dir} is not a tiny-imagenet-200 folder: no wnids.txt')
  with open(wnids_file) as f:
    wnids = sorted(line.strip() for line in f if line.strip())
  label_of = {wnid: index for index, wnid in enumerate(wnids)}
  train = []
  for wnid in wnids:
    folder = os.path.join(source_dir, 'train', wnid, 'images')
    train += [(os.path.join(folder, name), label_of[wnid]) for name in sorted(os.listdir(folder))
              if name.lower().endswith(('.jpeg', '.jpg'))]
  test = []
  with open(os.path.join(source_dir, 'val', 'val_annotations.txt')) as f:
    for line in f:
      fields = line.split('\t')
      if len(fields) >= 2:
        test.append((os.path.join(source_dir, 'val', 'images', fields[0]), label_of[fields[1]]))
  return wnids, {'train': train, 'test': test}


def prepare(source_dir: str, data_dir: str) -> str:
  """Writes `tiny_imagenet` into data_dir (rpat_jax.data.arrayrecord: record i of a split is the i-th
  image of `read_layout`'s listing); returns the dataset's directory."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (slow import)
  wnids, layout = read_layout(source_dir)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(names=wnids)})
  splits = {split: functools.partial(lambda examples: ({'image': path, 'label': label} for path, label in examples),
                                     examples) for split, examples in layout.items()}
  return arrayrecord.write('tiny_imagenet', VERSION, data_dir, features, splits,
                           description='Tiny-ImageNet (64x64, 200 classes) from the tiny-imagenet-200 folder.',
                           homepage='http://cs231n.stanford.edu/tiny-imagenet-200.zip')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> types.SimpleNamespace:
  cli = types.SimpleNamespace(
      source=flags.DEFINE_string('source', None, 'The tiny-imagenet-200 folder (wnids.txt, train/, val/).',
                                 flag_values=flag_values),
      data_dir=flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'The TFDS data_dir to write into.',
                                   flag_values=flag_values))
  flags.mark_flags_as_required(['source'], flag_values=flag_values)
  return cli


def main(argv, cli) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    print(prepare(cli.source.value, cli.data_dir.value))
  except (FileNotFoundError, KeyError, ValueError) as error:
    print(f'rpat_jax.data.tiny_imagenet: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(functools.partial(main, cli=define_flags()))
