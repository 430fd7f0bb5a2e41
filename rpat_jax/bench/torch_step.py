"""The PyTorch twin of our train step (PGD-AT + RPAT), timed the way users run PyTorch.

Same architecture (our initial weights, converted), same augmentation (zero-padded random crop + flip,
on the device), same PGD (random start, sign steps on the summed cross-entropy, BN in eval mode), same
three train-mode forwards z(x') -> z(x~) -> z(x) and RPAT loss, same SGD update. Two modes:

- `reference`: how the official code runs. fp32 eager, PyTorch's default backend settings, and the
  attack's `loss.backward()` of advertorch's `perturb_iterative`, which also computes parameter
  gradients at every attack step (the optimiser's `zero_grad` discards them).
- `tuned`: a strong PyTorch. bf16 autocast, channels_last, `torch.compile` of the model, cuDNN
  autotuning, and attack gradients for the input only (`torch.autograd.grad`).

The official code augments on the CPU in DataLoader workers; here both modes augment on the device, so
the input pipeline never limits the PyTorch side. This module imports torch: only `--torch` loads it.
"""

import time
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from rpat_jax import convert
from rpat_jax import models
from rpat_jax.bench import report
from rpat_jax.bench import torch_models

MODES = ('reference', 'tuned')


def default_device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def synchronize(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
  """uint8 [B, H, W, C] -> float [B, C, H, W] in [0, 1]: zero-padded random crop, then a coin-flip flip."""
  batch, height, width, _ = images.shape
  x = images.permute(0, 3, 1, 2).float() / 255.0
  if padding:
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), device=x.device, generator=generator)
    rows = offsets[:, :1] + torch.arange(height, device=x.device)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(width, device=x.device)  # [B, W]
    batch_index = torch.arange(batch, device=x.device)[:, None, None]
    x = padded[batch_index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [B, H, W, C] first.
  if flip:
    flips = torch.rand(batch, device=x.device, generator=generator) < 0.5
    x = torch.where(flips[:, None, None, None], x.flip(3), x)
  return x.contiguous()


def pgd(model, x: torch.Tensor, labels: torch.Tensor, *, norm: str, eps: float, step_size: float, steps: int,
        generator: torch.Generator, parameter_gradients: bool, random_init: bool = True) -> torch.Tensor:
  """advertorch's PGDAttack as the official code calls it (rpat_jax.attacks.pgd is our form of it)."""
  if not random_init:
    delta = torch.zeros_like(x)
  elif norm == 'linf':
    delta = (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * eps
  else:
    delta = _project_l2(torch.rand(x.shape, device=x.device, generator=generator) - x, eps)
  delta = (torch.clamp(x + delta, 0, 1) - x).detach()
  for _ in range(steps):
    delta.requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), labels, reduction='sum')
    if parameter_gradients:  # advertorch: loss.backward() fills the parameters' .grad too.
      loss.backward()
      grad = delta.grad
    else:
      grad, = torch.autograd.grad(loss, delta)
    with torch.no_grad():
      if norm == 'linf':
        delta = torch.clamp(delta + step_size * grad.sign(), -eps, eps)
        delta = torch.clamp(x + delta, 0, 1) - x
      else:
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None, None]
        delta = _project_l2(torch.clamp(x + delta + step_size * grad, 0, 1) - x, eps)
    delta = delta.detach()
  return torch.clamp(x + delta, 0, 1).detach()


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
  norm = delta.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None, None]
  return delta * torch.clamp(eps / norm, max=1.0)


# What the twin implements: the keys (and their allowed values) under which its step is ours.
_TWIN_SUPPORTS = {
    'method': ('pgd_at',), 'model.normalize': (False,), 'attack.bn_mode': ('eval',), 'data.pad_mode': ('constant',),
    'rpat.form': ('code',), 'rpat.detach_target': (False,), 'passes.fused': (False,), 'rpat.start_epoch': (0,),
    'ema.enabled': (False,),
}


def check_supported(config, keys=None) -> None:
  """ValueError naming the first of `keys` (default: all) whose value the PyTorch twin does not implement."""
  for key in keys or _TWIN_SUPPORTS:
    allowed = _TWIN_SUPPORTS[key]
    section, _, name = key.rpartition('.')
    value = (config[section] if section else config)[name]
    if value not in allowed:
      raise ValueError(f'--torch: {key}={value!r} has no PyTorch twin; allowed: {", ".join(map(repr, allowed))}')


def build_model(model_config, num_classes: int, variables, device: torch.device) -> torch.nn.Module:
  """The twin of our model with our variables {'params', 'batch_stats'} loaded (the same initial weights)."""
  fields = models.config_fields(model_config)
  model = torch_models.build(model_config.name, num_classes, **fields)
  # Our WRN converts to [S]'s `fc` head by default, the twin's head.
  state_dict = convert.flax_to_torch(variables, model_config.name, **fields)
  model.load_state_dict({key: torch.as_tensor(np.asarray(value)) for key, value in state_dict.items()})
  return model.to(device)


def make_step(config, model: torch.nn.Module, mode: str, generator: torch.Generator):
  """`step(images uint8 [B, H, W, C], labels [B]) -> loss`: augmentation, PGD, the RPAT loss, SGD."""
  attack, rpat = config.attack, config.rpat
  tuned = mode == 'tuned'
  device = next(model.parameters()).device
  optimizer = torch.optim.SGD(model.parameters(), lr=config.optimizer.lr, momentum=config.optimizer.momentum,
                              weight_decay=config.optimizer.weight_decay, nesterov=config.optimizer.nesterov)
  if tuned:
    model = model.to(memory_format=torch.channels_last)
    network = torch.compile(model)
  else:
    network = model
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tuned)
  rates = [float(rate) for rate in rpat.rates]

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = random_crop_flip(images, config.data.padding, config.data.flip, generator)
    if tuned:
      x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with autocast:
      x_adv = pgd(network, x, labels, norm=attack.norm, eps=attack.eps, step_size=attack.step_size,
                  steps=attack.steps, generator=generator, parameter_gradients=not tuned,
                  random_init=attack.random_start)
    model.train()
    with autocast:
      z_adv = network(x_adv).float()
      loss = F.cross_entropy(z_adv, labels)
      if rpat.enabled:  # Official order and gradient flow: z(x') -> z(x~) -> z(x), nothing detached.
        z_interp = [network(rate * x + (1 - rate) * x_adv).float() for rate in rates]
        z_clean = network(x).float()
        regulariser = sum(F.mse_loss(z, rate * z_clean + (1 - rate) * z_adv) for z, rate in zip(z_interp, rates))
        loss = loss + rpat.lam * regulariser / len(rates)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def time_mode(config, variables, *, num_classes: int, image_shape, mode: str, batch_size: int, steps: int,
              warmup: int, seed: int = 0) -> Dict:
  """Builds the twin, runs `warmup` untimed steps (compilation in `tuned`), then times `steps` steps.

  Returns {'mode', 'batch_size', 'dtype', 'compile_seconds' (the warm-up), 'step_ms', 'images_per_second'}.
  """
  if mode not in MODES:
    raise ValueError(f'torch mode {mode!r}; allowed: {", ".join(MODES)}')
  device = default_device()
  torch.manual_seed(seed)
  generator = torch.Generator(device=device).manual_seed(seed)
  if mode == 'tuned' and device.type == 'cuda':
    torch.backends.cudnn.benchmark = True
  model = build_model(config.model, num_classes, variables, device)
  step = make_step(config, model, mode, generator)
  # A device-resident pool of random images; each step takes a random batch of it, as a shuffled epoch.
  pool = max(4 * batch_size, 1024)
  images = torch.randint(0, 256, (pool,) + tuple(image_shape), dtype=torch.uint8, device=device, generator=generator)
  labels = torch.randint(0, num_classes, (pool,), device=device, generator=generator)

  def one_step():
    chosen = torch.randperm(pool, device=device, generator=generator)[:batch_size]
    loss = step(images[chosen], labels[chosen])
    synchronize(device)
    return loss

  started = time.perf_counter()
  for _ in range(warmup):
    one_step()
  compile_seconds = time.perf_counter() - started
  seconds = []
  for _ in range(steps):
    started = time.perf_counter()
    loss = one_step()
    seconds.append(time.perf_counter() - started)
  if not torch.isfinite(loss):
    raise FloatingPointError(f'the PyTorch {mode} step gave a non-finite loss')
  stats = report.timing_stats(seconds)
  return {'mode': mode, 'batch_size': batch_size, 'dtype': 'bfloat16' if mode == 'tuned' else 'float32',
          'compiled': mode == 'tuned', 'channels_last': mode == 'tuned', 'device': str(device),
          'threads': torch.get_num_threads(), 'compile_seconds': compile_seconds, 'step_ms': stats,
          'images_per_second': batch_size / (stats['median'] / 1e3)}
