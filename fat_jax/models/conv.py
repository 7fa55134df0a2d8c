"""A 2-D convolution whose gradients XLA's CPU backend runs at full speed, also inside loops.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature (flax ``nn.Conv``'s
``conv_general_dilated`` field). Its value, and everything on GPU/TPU, is XLA's plain
convolution. On CPU the gradients change formulation (the value only where said):

* **Input gradient** (every model's convolutions, `model.conv` 'xla' and 'im2col_grad'):
  dL/dx is the convolution of the output cotangent g with the spatially reversed kernel whose
  in/out features are swapped. JAX's transpose rule expresses that swap in the convolution's
  dimension labels (kernel ``01oi``); outside loops XLA's CPU layout pass copies the kernel
  into its canonical ``01io`` layout, but inside a ``while`` body (every attack written with
  `lax.fori_loop`: evaluation PGD, APGD, FAB, Square) it does not, and the non-canonical
  convolution runs on a generic path 3–6× slower than the whole rest of the step
  (docs/throughput.md). Here the tangent in x is written as the same convolution with the
  kernel stored transposed (``swapaxes(W, 2, 3)``, labels ``HWOI``), so its transpose, the
  input gradient, carries canonical ``HWIO`` labels everywhere: same sum, same order.
* **Strided input gradient** (`model.conv='patch_input_grad'`, what the evaluation attacks of
  `--mode=eval` run on, `config.eval.conv`): for stride s > 1 the input gradient is a
  convolution of g dilated by s (``lhs_dilation``), which XLA's CPU backend also runs slowly;
  there the tangent is ``patches(ẋ) · W`` (below), whose transpose is

      dL/dx_pad[n, h·s + kh, w·s + kw, ci] += Σ_co g[n, h, w, co] · W[kh, kw, ci, co],

  one matmul ``g · Wᵀ`` followed by the strided scatter-add of its kh·kw taps: the MNIST net's
  and PreActResNet-18's input-gradient steps took 0.6× and 0.85–0.98× as long
  (docs/throughput.md);
  float32 results agree with XLA's to ~1e-6 relative (the sum's order differs).
* **One-channel forward** (`model.conv='patch_input_grad'`, `use_space_to_depth_forward`): a
  strided layer reading a one-channel image (the MNIST net's first, 4×4 stride 2) computes its
  value on CPU as a stride-1 convolution of the space-to-depth input (`space_to_depth_conv`:
  s×s blocks of pixels become s² channels, the kernel regrouped alike). XLA's CPU convolution
  with one input channel is slow: the MNIST net's forward took 0.78× as long, what Square,
  forward-only, runs on (docs/throughput.md); values agree with XLA's to ~1e-7 (the sum's
  order differs).
* **Weight gradient** (`model.conv='im2col_grad'` and 1×1 kernels only,
  `use_patch_gradient`): for stride s, padding p,

      dL/dW[kh, kw, ci, co] = Σ_{n,h,w} x_pad[n, h·s + kh, w·s + kw, ci] · g[n, h, w, co],

  computed as one matmul ``patches(x)ᵀ · g`` over the (N·H_out·W_out) rows, where
  ``patches(x)[n, h, w, (kh, kw, ci)] = x_pad[n, h·s + kh, w·s + kw, ci]``; XLA computes
  it as a convolution whose window is the whole output map. For the 1×1 (shortcut) kernels the
  matmul makes the layer's forward + both gradients 0.4–0.6× as long
  (`benchmarks/conv_grad.py`, docs/throughput.md); the sum's order differs (float32 results
  agree to ~1e-6 relative).

Mechanism: a `jax.custom_jvp` whose tangent is ``conv(ẋ, W) + conv(x, Ẇ)`` (or
``patches(ẋ) · W``, ``patches(x) · Ẇ``); reverse mode transposes the terms into the gradients
above, and forward mode (`jax.jvp`), `vmap` and higher-order gradients keep working. Which
formulation runs is chosen when the computation is lowered, from its platform
(`jax.lax.platform_dependent`), so a function exported or compiled for a GPU holds only XLA's
own convolutions even when traced on a CPU host. Configurations other than NHWC/HWIO, no
dilation, one feature/batch group and an explicit or 'SAME'/'VALID' padding are XLA's plain
convolution everywhere.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def use_patch_gradient(x_shape: Sequence[int], w_shape: Sequence[int],
                       strides: Sequence[int]) -> bool:
  """Whether the im2col weight gradient beats XLA's on CPU for this layer: for 1×1 kernels
  (PreActResNet-18's strided shortcuts) it is one matmul of the strided input with g and took
  0.2–0.6× XLA's time (`benchmarks/conv_grad.py`, widths 16 and 64, batch 64); for 3×3
  kernels neither formulation won consistently, so XLA's stays."""
  del x_shape, strides
  return tuple(w_shape[:2]) == (1, 1)


def use_space_to_depth_forward(w_shape: Sequence[int], strides: Sequence[int],
                               pads: Sequence[tuple[int, int]]) -> bool:
  """Whether the forward runs as `space_to_depth_conv` on CPU under `patch_input_gradient`: a
  strided layer on a one-channel image (the MNIST net's first), kernel sides multiples of the
  strides, no negative padding; the MNIST net's forward took 0.78× XLA's time (module doc)."""
  kh, kw, cin = w_shape[:3]
  return (cin == 1 and max(strides) > 1 and kh % strides[0] == 0 and kw % strides[1] == 0
          and min(min(p) for p in pads) >= 0)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, *,
                         patch_weight_gradient: bool = False,
                         patch_input_gradient: bool = False) -> Array:
  """`jax.lax.conv_general_dilated` with the CPU gradients of the module doc; the im2col
  weight gradient only with `patch_weight_gradient` and where `use_patch_gradient`, the
  strided input gradient as ``patches(ẋ)·W`` transposed only with `patch_input_gradient`."""
  plain = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
               dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
               batch_group_count=batch_group_count, precision=precision,
               preferred_element_type=preferred_element_type)
  strides = tuple(window_strides)
  if not (_is_nhwc_hwio(dimension_numbers, lhs.ndim) and _all_one(lhs_dilation)
          and _all_one(rhs_dilation) and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None):
    return lax.conv_general_dilated(lhs, rhs, strides, padding, **plain)
  return conv_nhwc(lhs, rhs, strides, padding, precision, patch_weight_gradient=(
      patch_weight_gradient and use_patch_gradient(lhs.shape, rhs.shape, strides)),
      patch_input_gradient=patch_input_gradient)


def conv_nhwc(x: Array, w: Array, strides: Sequence[int],
              padding: str | Sequence[tuple[int, int]], precision: Any = None, *,
              patch_weight_gradient: bool = False,
              patch_input_gradient: bool = False) -> Array:
  """NHWC × HWIO convolution with the canonical input gradient on CPU (with
  `patch_input_gradient` and a stride > 1: ``patches(ẋ)·W`` transposed) and, with
  `patch_weight_gradient`, the weight gradient ``patches(x)ᵀ · g`` on CPU."""
  strides = tuple(int(s) for s in strides)
  pads = (lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding)
          if isinstance(padding, str) else padding)
  return _conv(x, w, strides, tuple((int(lo), int(hi)) for lo, hi in pads), precision,
               patch_weight_gradient, patch_input_gradient)


def _is_nhwc_hwio(dimension_numbers: Any, ndim: int) -> bool:
  if ndim != 4 or dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
        (1, 1, 1, 1), (1, 1, 1, 1), NHWC_HWIO)
  return tuple(dimension_numbers) == NHWC_HWIO


def _all_one(dilation: Sequence[int] | None) -> bool:
  return dilation is None or all(d == 1 for d in dilation)


def _xla_conv(x: Array, w: Array, strides, pads, precision) -> Array:
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC_HWIO,
                                  precision=precision)


def patches(x: Array, kernel: tuple[int, int], strides: Sequence[int],
            pads: Sequence[tuple[int, int]]) -> Array:
  """(N, H_out, W_out, kh·kw·C): ``x_pad[n, h·s + i, w·s + j, c]`` at column (i, j, c)."""
  (kh, kw), (sh, sw) = kernel, strides
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  n, hp, wp, c = x.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  taps = [lax.slice(x, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _patch_matmul(x: Array, w: Array, strides, pads, precision) -> Array:
  """``patches(x) · W`` (= the convolution); its transpose in W is ``patches(x)ᵀ · g``."""
  kh, kw, cin, cout = w.shape
  return jnp.dot(patches(x, (kh, kw), strides, pads), w.reshape(kh * kw * cin, cout),
                 precision=precision)


def _swapped_kernel_conv(x: Array, w: Array, strides, pads, precision) -> Array:
  """``_xla_conv(x, w)`` with the kernel stored as ``swapaxes(w, 2, 3)`` (labels HWOI): its
  transpose in x, the input gradient, has canonical HWIO labels (module doc)."""
  return lax.conv_general_dilated(x, jnp.swapaxes(w, 2, 3), strides, pads,
                                  dimension_numbers=('NHWC', 'HWOI', 'NHWC'),
                                  precision=precision)


def _forward(x: Array, w: Array, strides, pads, precision, patch_input_gradient: bool) -> Array:
  """The layer's value: XLA's convolution, or on CPU `space_to_depth_conv` where
  `patch_input_gradient` and `use_space_to_depth_forward`."""
  if not (patch_input_gradient and use_space_to_depth_forward(w.shape, strides, pads)):
    return _xla_conv(x, w, strides, pads, precision)
  return lax.platform_dependent(
      x, w, cpu=lambda a, b: space_to_depth_conv(a, b, strides, pads, precision),
      default=lambda a, b: _xla_conv(a, b, strides, pads, precision))


def space_to_depth_conv(x: Array, w: Array, strides: Sequence[int],
                        pads: Sequence[tuple[int, int]], precision: Any = None) -> Array:
  """The stride-s convolution (kernel sides multiples of s) as a stride-1 one on the
  space-to-depth input: x_pad padded at the end to multiples of s,
  ``x'[n, i, j, (a, b, c)] = x_pad[n, i·s_h + a, j·s_w + b, c]`` and
  ``W'[p, q, (a, b, ci), co] = W[p·s_h + a, q·s_w + b, ci, co]``, so that
  ``y[n, h, w] = Σ_{p,q} x'[n, h + p, w + q] · W'[p, q]`` (cropped to the strided output)."""
  (sh, sw), (kh, kw, cin, cout) = strides, w.shape
  n, height, width, c = x.shape
  hp, wp = height + sum(pads[0]), width + sum(pads[1])
  x = jnp.pad(x, ((0, 0), (pads[0][0], pads[0][1] + -hp % sh),
                  (pads[1][0], pads[1][1] + -wp % sw), (0, 0)))
  h, wd = x.shape[1] // sh, x.shape[2] // sw
  x = x.reshape(n, h, sh, wd, sw, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, wd, sh * sw * c)
  w = w.reshape(kh // sh, sh, kw // sw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(
      kh // sh, kw // sw, sh * sw * cin, cout)
  y = lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=NHWC_HWIO,
                               precision=precision)
  return y[:, :(hp - kh) // sh + 1, :(wp - kw) // sw + 1]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x: Array, w: Array, strides, pads, precision, patch_weight_gradient: bool,
          patch_input_gradient: bool) -> Array:
  return _forward(x, w, strides, pads, precision, patch_input_gradient)


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(strides, pads, precision, patch_weight_gradient, patch_input_gradient, primals,
              tangents):
  """The value (`_forward`) and ``conv(ẋ, W) + conv(x, Ẇ)``; on CPU the first with the
  swapped kernel labels or, with `patch_input_gradient` and a stride > 1, as
  ``patches(ẋ)·W``, and, with `patch_weight_gradient`, the second as ``patches(x)·Ẇ``."""
  (x, w), (x_dot, w_dot) = primals, tangents
  y = _forward(x, w, strides, pads, precision, patch_input_gradient)
  xla = lambda a, b: _xla_conv(a, b, strides, pads, precision)
  parts = []
  if not isinstance(x_dot, jax.custom_derivatives.SymbolicZero):
    input_tangent = (_patch_matmul if patch_input_gradient and max(strides) > 1
                     else _swapped_kernel_conv)
    parts.append(lax.platform_dependent(
        x_dot, w, cpu=lambda a, b: input_tangent(a, b, strides, pads, precision),
        default=xla))
  if not isinstance(w_dot, jax.custom_derivatives.SymbolicZero):
    parts.append(lax.platform_dependent(
        x, w_dot, cpu=lambda a, b: _patch_matmul(a, b, strides, pads, precision),
        default=xla) if patch_weight_gradient else xla(x, w_dot))
  return y, sum(parts[1:], parts[0])
