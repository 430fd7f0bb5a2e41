"""XLA:CPU convolutions on Eigen kernels against YNNPACK (`rpat_jax/cpu/xla_flags.py`): milliseconds per layer.

  python benchmarks/xla_cpu_convolutions.py [B=64]                 # what importing rpat_jax sets: Eigen
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution \
    python benchmarks/xla_cpu_convolutions.py [B=64]               # jaxlib 0.10's default: YNNPACK

Times, for the convolutions of ResNet-18 and of the quick-start CNN at batch B (float32, NHWC, random
data), a jitted forward pass and a jitted forward pass plus input gradient (of sum(tanh(conv))), each the
mean of 5 calls after one, and the same in PyTorch (channels-last, 2 threads) when torch is installed.
Prints one JSON line with the XLA_FLAGS in effect and whether the compiled convolution is a YNNPACK
fusion (docs/benchmarks.md).
"""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]
import rpat_jax  # pylint: disable=wrong-import-position,unused-import  (sets XLA_FLAGS before JAX starts)
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# (model, side, in channels, out channels, kernel, stride)
LAYERS = (('resnet18', 32, 3, 64, 3, 1), ('resnet18', 32, 64, 64, 3, 1), ('resnet18', 32, 64, 128, 3, 2),
          ('resnet18', 16, 128, 128, 3, 1), ('resnet18', 16, 128, 256, 3, 2), ('resnet18', 8, 256, 256, 3, 1),
          ('resnet18', 8, 256, 512, 3, 2), ('resnet18', 4, 512, 512, 3, 1), ('small_cnn', 32, 3, 16, 3, 1),
          ('small_cnn', 32, 16, 32, 3, 2), ('small_cnn', 16, 32, 64, 3, 2))


def milliseconds(fn, repeat=5):
  jax.block_until_ready(fn())
  started = time.perf_counter()
  for _ in range(repeat):
    jax.block_until_ready(fn())
  return round((time.perf_counter() - started) / repeat * 1000, 2)


def main():
  batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
  try:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(2)
  except ImportError:
    torch = None
  rows, ynn = [], None
  for model, side, channels, outputs, kernel, stride in LAYERS:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, channels)).astype(np.float32)
    w = (rng.standard_normal((kernel, kernel, channels, outputs)) / np.sqrt(9 * channels)).astype(np.float32)
    pad = kernel // 2

    def conv(x, w, stride=stride, pad=pad):
      return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    forward = jax.jit(conv)
    gradient = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(jnp.tanh(conv(x, w)))))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    if ynn is None:
      ynn = '__ynn_fusion' in forward.lower(xj, wj).compile().as_text()
    row = {'model': model, 'layer': f'{side}x{side}x{channels}->{outputs} k{kernel} s{stride}',
           'forward_ms': milliseconds(lambda: forward(xj, wj)), 'forward_input_gradient_ms': milliseconds(lambda: gradient(xj, wj))}
    if torch is not None:
      layer = torch.nn.Conv2d(channels, outputs, kernel, stride, pad, bias=False).to(memory_format=torch.channels_last)
      layer.weight.data = torch.tensor(w.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=torch.channels_last)
      xt = torch.tensor(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=torch.channels_last)
      with torch.no_grad():
        row['torch_forward_ms'] = milliseconds(lambda: layer(xt))
      xg = xt.clone().requires_grad_()
      row['torch_forward_input_gradient_ms'] = milliseconds(
          lambda: torch.autograd.grad(torch.tanh(layer(xg)).sum(), [xg]))
    rows.append(row)
  print(json.dumps({'batch': batch, 'xla_flags': os.environ.get('XLA_FLAGS', ''), 'ynn_convolutions': ynn,
                    'layers': rows}))


if __name__ == '__main__':
  main()
