"""The one way the package writes a TFDS ArrayRecord dataset, without TensorFlow (CIFAR-10/100 and
Tiny-ImageNet use it).

Records keep the order the examples are given in (record i of a split is its i-th example: TFDS's
hashed shuffling is off), and images given as uint8 arrays are stored as PNG encoded here with PIL (TFDS
would need TensorFlow to encode them). TFDS writes into an `incomplete.*` directory beside the version
directory and renames it when every split is complete, so a reader sees a whole dataset or none.
"""

import io
import os
import shutil
import tempfile
import types
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np


def _png(image: np.ndarray) -> io.BytesIO:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format='PNG')
  buffer.seek(0)
  return buffer


def write(name: str, version: str, data_dir: str, features, splits: Dict[str, Callable[[], Iterable[Dict[str, Any]]]],
          *, description: str = '', homepage: str = '', citation: str = '',
          supervised_keys: Optional[Tuple[str, str]] = ('image', 'label')) -> str:
  """Writes `name`/`version` under `data_dir` with these `features` (a tfds FeaturesDict); `splits` maps each
  split to a function that yields its examples in order. Returns the dataset's directory."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (slow import)

  def body(namespace):
    namespace['name'] = name
    namespace['VERSION'] = tfds.core.Version(version)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, description=description, features=features, homepage=homepage,
                                   citation=citation, supervised_keys=supervised_keys, disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
      for index, example in enumerate(splits[split]()):
        yield index, {key: _png(value) if isinstance(value, np.ndarray) and value.ndim == 3 else value
                      for key, value in example.items()}

    namespace.update(_info=_info, _split_generators=_split_generators, _generate_examples=_generate_examples)

  builder_class = types.new_class(f'{name.title().replace("_", "")}Writer', (tfds.core.GeneratorBasedBuilder,),
                                  {'skip_registration': True}, body)
  data_dir = os.path.expanduser(data_dir)
  os.makedirs(data_dir, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix=f'.{name}-downloads-', dir=data_dir)  # TFDS's empty download folders.
  try:
    builder = builder_class(data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare(download_dir=scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return builder.data_dir
