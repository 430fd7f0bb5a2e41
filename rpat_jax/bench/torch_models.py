"""PyTorch twins of our networks, with the state_dict key layouts of the official code: the converter's
tests and the benchmark's PyTorch side use them (this module imports torch; the package never does).

Written from the published architectures (not copied); what matters is that module names, registration
and the forward pass are those of the sources named in each docstring:
- `PreActResNet18`: RPAT_SOTAs / ReBAT `networks/preactresnet.py`.
- `ResNet18(bottleneck=False)`: RPAT_Benchmarks `models/resnet.py` BasicBlock (= kuangliu's layout);
  `ResNet18(bottleneck=True)`: its `resnet18`, Bottleneck blocks [2, 2, 2, 2].
- `PreActResNet18Benchmarks`: RPAT_Benchmarks `models/resnet.py` `pre_resnet18` (BN stem of stride 2, no
  final BN, avg_pool 4: 64x64 inputs).
- `WideResNet(depth, widen_factor, head)`: RPAT_SOTAs / ReBAT (`head='fc'`) or RPAT_Benchmarks
  (`head='linear'`) `wideresnet.py`.
- `SmallCNN(width)`: our `small_cnn` (no official counterpart), for benchmarks at test size.
All take NCHW float32 images; none normalises its input. `build(model_name, ...)` makes the twin of one
of our model names.
"""

import torch
from torch import nn
from torch.nn import functional as F


def _conv(inputs, outputs, kernel, stride=1):
  return nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False)


class _PreActBlock(nn.Module):
  def __init__(self, inputs, outputs, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inputs)
    self.conv1 = _conv(inputs, outputs, 3, stride)
    self.bn2 = nn.BatchNorm2d(outputs)
    self.conv2 = _conv(outputs, outputs, 3)
    if stride != 1 or inputs != outputs:  # Absent otherwise: no `shortcut` keys at all.
      self.shortcut = nn.Sequential(_conv(inputs, outputs, 1, stride))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return out + shortcut


class PreActResNet18(nn.Module):
  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = _conv(3, 64, 3)
    inputs = 64
    for stage, width in enumerate((64, 128, 256, 512)):
      first = _PreActBlock(inputs, width, 2 if stage else 1)
      setattr(self, f'layer{stage + 1}', nn.Sequential(first, _PreActBlock(width, width, 1)))
      inputs = width
    self.bn = nn.BatchNorm2d(512)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
    out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
    return self.linear(out)


class PreActResNet18Benchmarks(nn.Module):
  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = _conv(3, 64, 3, stride=2)
    self.bn1 = nn.BatchNorm2d(64)
    inputs = 64
    for stage, width in enumerate((64, 128, 256, 512)):
      first = _PreActBlock(inputs, width, 2 if stage else 1)
      setattr(self, f'layer{stage + 1}', nn.Sequential(first, _PreActBlock(width, width, 1)))
      inputs = width
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    return self.linear(F.avg_pool2d(out, 4).flatten(1))


class _ResNetBlock(nn.Module):
  """BasicBlock (conv1-bn1, conv2-bn2) or Bottleneck (1x1, 3x3 strided, 1x1 to 4x width)."""

  def __init__(self, inputs, width, stride, bottleneck):
    super().__init__()
    outputs = 4 * width if bottleneck else width
    if bottleneck:
      shapes = [(inputs, width, 1, 1), (width, width, 3, stride), (width, outputs, 1, 1)]
    else:
      shapes = [(inputs, width, 3, stride), (width, width, 3, 1)]
    self.depth = len(shapes)
    for i, (cin, cout, kernel, conv_stride) in enumerate(shapes):
      setattr(self, f'conv{i + 1}', _conv(cin, cout, kernel, conv_stride))
      setattr(self, f'bn{i + 1}', nn.BatchNorm2d(cout))
    self.shortcut = nn.Sequential()  # Empty: contributes no keys when the shapes agree.
    if stride != 1 or inputs != outputs:
      self.shortcut = nn.Sequential(_conv(inputs, outputs, 1, stride), nn.BatchNorm2d(outputs))

  def forward(self, x):
    out = x
    for i in range(1, self.depth + 1):
      out = getattr(self, f'bn{i}')(getattr(self, f'conv{i}')(out))
      if i < self.depth:
        out = F.relu(out)
    return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
  """kuangliu's ResNet: `blocks` per stage ((2, 2, 2, 2): ResNet-18; (3, 4, 6, 3): ResNet-34)."""

  def __init__(self, num_classes=10, bottleneck=False, blocks=(2, 2, 2, 2)):
    super().__init__()
    self.conv1 = _conv(3, 64, 3)
    self.bn1 = nn.BatchNorm2d(64)
    expansion, inputs = (4 if bottleneck else 1), 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks)):
      stage_blocks = []
      for i in range(count):
        stage_blocks.append(_ResNetBlock(inputs, width, 2 if stage and not i else 1, bottleneck))
        inputs = width * expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*stage_blocks))
    self.linear = nn.Linear(512 * expansion, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    return self.linear(F.avg_pool2d(out, 4).flatten(1))


def ResNet18(num_classes=10, bottleneck=False) -> 'ResNet':  # pylint: disable=invalid-name
  return ResNet(num_classes, bottleneck)


class _WideBlock(nn.Module):
  def __init__(self, inputs, outputs, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inputs)
    self.conv1 = _conv(inputs, outputs, 3, stride)
    self.bn2 = nn.BatchNorm2d(outputs)
    self.conv2 = _conv(outputs, outputs, 3)
    self.equal = inputs == outputs
    self.convShortcut = None if self.equal else _conv(inputs, outputs, 1, stride)  # pylint: disable=invalid-name

  def forward(self, x):
    activated = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
    return out + (x if self.equal else self.convShortcut(activated))


class _Group(nn.Module):
  def __init__(self, count, inputs, outputs, stride):
    super().__init__()
    self.layer = nn.Sequential(*[_WideBlock(inputs if i == 0 else outputs, outputs, stride if i == 0 else 1)
                                 for i in range(count)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth=34, widen_factor=10, num_classes=10, head='fc'):
    super().__init__()
    count = (depth - 4) // 6
    widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    self.conv1 = _conv(3, 16, 3)
    for group, stride in enumerate((1, 2, 2)):
      setattr(self, f'block{group + 1}', _Group(count, widths[group], widths[group + 1], stride))
    self.bn1 = nn.BatchNorm2d(widths[3])
    self.head_name = head
    setattr(self, head, nn.Linear(widths[3], num_classes))

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.avg_pool2d(F.relu(self.bn1(out)), 8).flatten(1)
    return getattr(self, self.head_name)(out)


class SmallCNN(nn.Module):
  def __init__(self, width=32, num_classes=10):
    super().__init__()
    inputs = 3
    for i, (factor, stride) in enumerate(((1, 1), (2, 2), (4, 2))):
      setattr(self, f'conv{i}', _conv(inputs, width * factor, 3, stride))
      setattr(self, f'bn{i}', nn.BatchNorm2d(width * factor))
      inputs = width * factor
    self.head = nn.Linear(inputs, num_classes)

  def forward(self, x):
    for i in range(3):
      x = F.relu(getattr(self, f'bn{i}')(getattr(self, f'conv{i}')(x)))
    return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(model_name: str, num_classes: int, **fields) -> nn.Module:
  """The twin of `rpat_jax.models.create_model(model_name, num_classes, **fields)` (stem strides as ours).

  The twins with a stem stride of their own (ResNet-18, WideResNet) are the 32x32 forms; the 64x64
  `preact_resnet18_benchmarks` is [B]'s own.
  """
  if model_name == 'small_cnn':
    return SmallCNN(fields.get('width', 32), num_classes)
  if model_name == 'preact_resnet18':
    return PreActResNet18(num_classes)
  if model_name == 'preact_resnet18_benchmarks':
    return PreActResNet18Benchmarks(num_classes)
  if model_name in ('resnet18', 'resnet18_bottleneck') and fields.get('stem_stride', 1) == 1:
    return ResNet18(num_classes, bottleneck=model_name == 'resnet18_bottleneck')
  if model_name == 'wide_resnet' and fields.get('stem_stride', 1) == 1:
    return WideResNet(fields.get('depth', 34), fields.get('widen_factor', 10), num_classes, head='fc')
  raise ValueError(f'model.name={model_name!r} with {fields} has no PyTorch twin; allowed: small_cnn, '
                   'preact_resnet18, preact_resnet18_benchmarks, resnet18, resnet18_bottleneck and wide_resnet '
                   'with stem_stride=1')


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random weights and non-trivial BatchNorm running statistics and counters; eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        size = module.num_features
        module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
        module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
        module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
        module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
        module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
      elif isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
  return model.eval()
