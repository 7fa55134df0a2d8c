"""fat_jax's convolution (`fat_jax.models.conv`) against XLA's.

The default one equals `lax.conv_general_dilated` bit for bit in value and gradients, and its
input gradient stays a canonical convolution inside loops; the im2col weight-gradient one
equals it to 1e-5 for every configuration the models use, and so does 'patch_input_grad' (its
strided one-channel forward a stride-1 convolution on CPU); forward mode, vmap and second-order
gradients keep working; a computation lowered for a GPU holds only XLA's convolutions.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from fat_jax.data import DATASET_INFOS
from fat_jax.models import build_model, core
from fat_jax.models.conv import (NHWC_HWIO, conv_general_dilated, conv_nhwc,
                                 use_patch_gradient, use_space_to_depth_forward)

# (input size, in channels, out channels, kernel, stride, padding): PreActResNet-18's stem,
# 3×3 stride 1 and 2, its 1×1 stride-2 shortcuts, MNISTNet's 4×4 stride 2, odd sizes, 'SAME'.
CONFIGS = [(8, 3, 5, 3, 1, ((1, 1), (1, 1))), (8, 4, 6, 3, 2, ((1, 1), (1, 1))),
           (8, 4, 6, 1, 2, ((0, 0), (0, 0))), (7, 3, 5, 1, 2, ((0, 0), (0, 0))),
           (9, 2, 4, 4, 2, ((1, 1), (1, 1))), (7, 3, 4, 3, 2, 'SAME'), (5, 3, 4, 3, 1, 'VALID')]


def xla(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC_HWIO)


def ours(x, w, strides, padding):
  return conv_nhwc(x, w, strides, padding, patch_weight_gradient=True)


def inputs(size, cin, cout, k, seed=0):
  kx, kw = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(kx, (3, size, size, cin)),
          jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin))


def rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize('size,cin,cout,k,s,padding', CONFIGS)
def test_value_and_gradients_equal_xla(size, cin, cout, k, s, padding):
  x, w = inputs(size, cin, cout, k)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), padding)))
  np.testing.assert_array_equal(jax.jit(ours, static_argnums=(2, 3))(x, w, (s, s), padding),
                                jax.jit(xla, static_argnums=(2, 3))(x, w, (s, s), padding))
  (gx, gw), (rx, rw) = (jax.jit(jax.grad(loss(f), (0, 1)))(x, w) for f in (ours, xla))
  np.testing.assert_array_equal(gx, rx)  # the input gradient is XLA's own
  assert rel(gw, rw) < 1e-5
  dispatched = lambda x, w, st, p: conv_general_dilated(x, w, st, p, dimension_numbers=NHWC_HWIO)
  assert rel(jax.jit(jax.grad(loss(dispatched), 1))(x, w), rw) < 1e-5


def test_vmap_jvp_and_second_order_match_xla():
  x, w = inputs(8, 4, 6, 1)
  cotangents = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 6))

  def pullbacks(conv):  # per-cotangent (∇x, ∇W), as FAB's vmapped pullback of the logits
    _, vjp = jax.vjp(lambda x, w: conv(x, w, (2, 2), ((0, 0), (0, 0))), x, w)
    return jax.vmap(vjp)(cotangents)

  for a, b in zip(jax.jit(lambda: pullbacks(ours))(), jax.jit(lambda: pullbacks(xla))()):
    assert rel(a, b) < 1e-5
  tangents = (jnp.ones_like(x), jnp.ones_like(w))
  assert rel(jax.jvp(lambda x, w: ours(x, w, (2, 2), 'VALID'), (x, w), tangents)[1],
             jax.jvp(lambda x, w: xla(x, w, (2, 2), 'VALID'), (x, w), tangents)[1]) < 1e-5

  def input_grad_norm(conv):  # GradAlign-style: ∇_W of a function of ∇_x
    grad_x = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w, (2, 2), 'VALID'))))
    return jax.grad(lambda w: jnp.sum(grad_x(x, w) ** 2))(w)

  assert rel(input_grad_norm(ours), input_grad_norm(xla)) < 1e-5


def weight_gradient_hlo(platform: str) -> str:
  x, w = inputs(8, 4, 6, 1)
  grad = jax.jit(jax.grad(lambda w: jnp.sum(ours(x, w, (2, 2), 'VALID') ** 2)))
  return grad.trace(w).lower(lowering_platforms=(platform,)).as_text()


def test_gpu_lowering_is_xla_convolution_cpu_lowering_is_matmul():
  gpu, cpu = weight_gradient_hlo('cuda'), weight_gradient_hlo('cpu')
  assert 'dot_general' not in gpu and gpu.count('stablehlo.convolution') == 2  # fwd, ∇W
  assert 'dot_general' in cpu and cpu.count('stablehlo.convolution') == 1      # fwd only


def test_dispatch_keeps_xla_for_3x3_and_unsupported_configurations():
  assert use_patch_gradient((2, 8, 8, 4), (1, 1, 4, 6), (2, 2))
  assert not use_patch_gradient((2, 8, 8, 4), (3, 3, 4, 6), (1, 1))
  x, w = inputs(8, 4, 4, 1)
  dilated = jax.make_jaxpr(lambda x, w: conv_general_dilated(
      x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=NHWC_HWIO))(x, w)
  nchw = jax.make_jaxpr(lambda x, w: conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NCHW', 'HWIO', 'NCHW')))(
          x.transpose(0, 3, 1, 2), w)
  used = jax.make_jaxpr(lambda x, w: conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC_HWIO))(x, w)
  assert 'name=_conv' not in str(dilated) and 'name=_conv' not in str(nchw)
  assert 'name=_conv' in str(used)


class TwoConvs(nn.Module):
  """conv3×3 then a 1×1 stride-2 shortcut-like conv, built with the models' `core.conv`."""
  impl: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(core.conv(x, 6, 3, padding=1, name='a', impl=self.impl))
    return core.conv(x, 5, 1, stride=2, bias=True, name='b', impl=self.impl)


def test_core_conv_switch_keeps_parameters_values_and_gradients():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  params = TwoConvs('xla').init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, params,
               TwoConvs('im2col_grad').init(jax.random.key(0), x))
  (v1, g1), (v2, g2) = (jax.jit(jax.value_and_grad(
      lambda p, m=TwoConvs(impl): jnp.sum(jnp.sin(m.apply(p, x)))))(params)
      for impl in ('im2col_grad', 'xla'))
  np.testing.assert_array_equal(v1, v2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g2)


def test_preact_resnet18_takes_the_matmul_for_its_three_shortcuts_only():
  info = DATASET_INFOS['cifar10']
  x = jnp.zeros((2, 32, 32, 3))
  convolutions = {}
  for impl in ('xla', 'im2col_grad'):
    model = build_model(ml_collections.ConfigDict(dict(name='preact_resnet18', width=4,
                                                       conv=impl)), info)
    variables = jax.eval_shape(lambda: model.module.init(jax.random.key(0), x, train=False))
    grad = jax.jit(jax.grad(lambda p, s: jnp.sum(model.apply(p, s, x, True)[0])))
    hlo = grad.trace(variables['params'], variables['batch_stats']).lower(
        lowering_platforms=('cpu',)).as_text()
    convolutions[impl] = hlo.count('stablehlo.convolution')
  assert convolutions['xla'] == 20 + 19 + 20       # forward, input and weight gradients
  assert convolutions['im2col_grad'] == convolutions['xla'] - 3


@pytest.mark.parametrize('size,cin,cout,k,s,padding', CONFIGS)
def test_default_convolution_is_xla_value_and_gradients_bit_for_bit(size, cin, cout, k, s,
                                                                     padding):
  x, w = inputs(size, cin, cout, k, seed=2)
  default = lambda x, w, st, p: conv_general_dilated(x, w, st, p, dimension_numbers=NHWC_HWIO)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), padding)))
  for a, b in zip(*(jax.jit(jax.value_and_grad(loss(f), (0, 1)))(x, w) for f in (default, xla))):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_input_gradient_inside_a_loop_is_a_canonical_convolution_on_cpu():
  """Inside a `fori_loop` (the evaluation attacks) XLA's CPU backend keeps JAX's own
  input-gradient convolution with its kernel labelled 01oi and runs it on a slow generic path;
  fat_jax's is labelled 01io there too (`fat_jax.models.conv`)."""
  x, w = inputs(9, 4, 6, 4)
  default = lambda x, w: conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                              dimension_numbers=NHWC_HWIO)
  grad = jax.grad(lambda d, w: jnp.sum(jnp.tanh(default(x + d, w))))
  steps = jax.jit(lambda w: jax.lax.fori_loop(
      0, 3, lambda i, d: jnp.clip(d + 0.1 * jnp.sign(grad(d, w)), -0.3, 0.3), jnp.zeros_like(x)))
  hlo = steps.lower(w).compile().as_text()
  labels = re.findall(r'dim_labels=(\w+)->', hlo)
  assert len(labels) >= 2 and all(label.endswith('_01io') for label in labels), labels


def test_unknown_conv_value_is_rejected():
  with pytest.raises(ValueError, match='model.conv'):
    build_model(ml_collections.ConfigDict(dict(name='cnn', conv='fast')), DATASET_INFOS['cifar10'])


@pytest.mark.parametrize('size,cin,cout,k,s,padding', CONFIGS)
def test_patch_input_gradient_same_value_input_gradient_to_1e5(size, cin, cout, k, s, padding):
  """`model.conv='patch_input_grad'`: XLA's forward bit for bit, XLA's weight gradient bit for
  bit, the input gradient bit for bit at stride 1 and to 1e-5 when strided."""
  x, w = inputs(size, cin, cout, k, seed=3)
  patched = lambda x, w, st, p: conv_general_dilated(x, w, st, p, dimension_numbers=NHWC_HWIO,
                                                     patch_input_gradient=True)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), padding)))
  (v, (gx, gw)), (rv, (rx, rw)) = (jax.jit(jax.value_and_grad(loss(f), (0, 1)))(x, w)
                                   for f in (patched, xla))
  np.testing.assert_array_equal(v, rv)
  np.testing.assert_array_equal(gw, rw)
  if s == 1:
    np.testing.assert_array_equal(gx, rx)
  else:
    assert rel(gx, rx) < 1e-5


def test_patch_input_gradient_inside_a_loop_has_no_convolution_but_the_forward():
  """A strided layer's input gradient inside a `fori_loop` (an attack) is no convolution at
  all with 'patch_input_grad' (XLA's is ``lhs_dilation``-ed, slow on CPU): only the forward
  one is left, and a GPU lowering keeps XLA's."""
  x, w = inputs(9, 4, 6, 4)
  patched = lambda x, w: conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                              dimension_numbers=NHWC_HWIO,
                                              patch_input_gradient=True)
  grad = jax.grad(lambda d, w: jnp.sum(jnp.tanh(patched(x + d, w))))
  steps = jax.jit(lambda w: jax.lax.fori_loop(
      0, 3, lambda i, d: jnp.clip(d + 0.1 * jnp.sign(grad(d, w)), -0.3, 0.3), jnp.zeros_like(x)))
  assert len(re.findall(r'dim_labels=(\w+)->', steps.lower(w).compile().as_text())) == 1
  gpu = steps.trace(w).lower(lowering_platforms=('cuda',)).as_text()
  assert gpu.count('stablehlo.convolution') == 2 and 'dot_general' not in gpu


@pytest.mark.parametrize('size,k,s,pads', [
    (10, 4, 2, ((1, 1), (1, 1))),   # the MNIST net's first layer
    (9, 4, 2, ((1, 2), (0, 1))), (11, 6, 3, ((0, 0), (2, 2)))])
def test_one_channel_strided_forward_is_a_stride_1_convolution_on_cpu(size, k, s, pads):
  """`use_space_to_depth_forward`: a strided layer on a one-channel image computes its value
  as a stride-1 convolution of the space-to-depth input on CPU under 'patch_input_grad'
  (XLA's value to 1e-6, gradients as for other layers), XLA's own with 'xla' and on a GPU."""
  x, w = inputs(size, 1, 16, k, seed=5)
  assert use_space_to_depth_forward(w.shape, (s, s), pads)
  assert not use_space_to_depth_forward((k, k, 2, 16), (s, s), pads)
  assert not use_space_to_depth_forward((3, 3, 1, 16), (2, 2), pads)
  patched = lambda x, w: conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC_HWIO,
                                              patch_input_gradient=True)
  plain = lambda x, w: conv_general_dilated(x, w, (s, s), pads, dimension_numbers=NHWC_HWIO)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  (v, (gx, gw)), (rv, (rx, rw)) = (jax.jit(jax.value_and_grad(loss(f), (0, 1)))(x, w)
                                   for f in (patched, lambda x, w: xla(x, w, (s, s), pads)))
  assert rel(v, rv) < 1e-5 and rel(gx, rx) < 1e-5 and rel(gw, rw) < 1e-5
  reference = jax.jit(xla, static_argnums=(2, 3))(x, w, (s, s), pads)
  assert rel(jax.jit(patched)(x, w), reference) < 1e-6
  np.testing.assert_array_equal(jax.jit(plain)(x, w), reference)
  hlo = jax.jit(patched).lower(x, w).compile().as_text()
  assert re.findall(r'window=\{size=(\w+)', hlo) == [f'{k // s}x{k // s}'] and 'stride=' not in hlo
  gpu = jax.jit(patched).trace(x, w).lower(lowering_platforms=('cuda',)).as_text()
  assert gpu.count('stablehlo.convolution') == 1 and f'stride = [{s}, {s}]' in gpu
