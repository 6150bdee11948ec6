"""Linear filters on NHWC image batches: separable convolution, Gaussian windows, pooling.

Every filter computes in full float32: convolutions run at `precision=HIGHEST` so they are not
silently computed in TF32/bfloat16 on GPUs and TPUs (SSIM subtracts nearly equal filtered
moments; TF32's 10-bit mantissa turns that difference into noise), and the separable 2-D filters
are sums of shifted planes (plain float32 multiply-adds).

`filter_separable` and `filter_planes` filter two spatial axes by adding shifted copies, with a
hand-written VJP: XLA's CPU depthwise convolution is 30x slower, and the autodiff transpose of the
shifted slices (a sum of pads) about 10x slower, than this. `filter_separable` works on `[B, H, W,
C]` in place, viewed as `[B, H, W * C]` (a shift by one column is a shift by C elements), so no
channel transpose is needed: for colour images that transpose cost as much as the filter. The
second pass, and each transposed pass of the backward, is evaluated once into memory (see
`materialized`) rather than recomputed inside every consumer. Being a `custom_vjp`, the filters
support `grad`/`vjp`, `jit`, `vmap` and sharding but not forward-mode `jvp`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from perceptual import lowering


@functools.cache
def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian window of `size` taps (a numpy constant, folded at trace time)."""
  if size < 1 or sigma <= 0:
    raise ValueError(f"a Gaussian window needs size >= 1 and sigma > 0, got {size}, {sigma}.")
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  k = np.exp(-0.5 * np.square(t / sigma))
  return (k / k.sum()).astype(np.float32)


def filter_1d(x: jax.Array, kernel: np.ndarray, *, axis: int, padding: str = "VALID") -> jax.Array:
  """Correlates every channel of `x` `[B, H, W, C]` with a 1-D `kernel` along `axis` (1 or 2).

  Args:
    x: images `[B, H, W, C]`.
    kernel: 1-D taps.
    axis: 1 (rows, vertical filtering) or 2 (columns, horizontal filtering).
    padding: "VALID" (output shrinks by len(kernel) - 1) or "SAME" (zero padding).

  Returns:
    The filtered images.
  """
  channels = x.shape[-1]
  taps = jnp.asarray(kernel, x.dtype)
  shape = (len(kernel), 1) if axis == 1 else (1, len(kernel))
  rhs = jnp.broadcast_to(taps.reshape(shape + (1, 1)), shape + (1, channels))
  return jax.lax.conv_general_dilated(
    x,
    rhs,
    window_strides=(1, 1),
    padding=padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=channels,
    precision=jax.lax.Precision.HIGHEST,
  )


def filter_separable(
  x: jax.Array, kernel: np.ndarray, *, padding: str = "VALID", dims: int = 2
) -> jax.Array:
  """Filters every channel of `x` `[..., H, W, C]` with the outer product `kernel x kernel`.

  Args:
    x: images `[..., H, W, C]` (e.g. `[B, H, W, C]`, or a stack of such batches); with `dims=3`
      volumes `[..., D, H, W, C]`.
    kernel: 1-D taps, applied along each spatial axis in turn (D, H, then W).
    padding: "VALID" (each side shrinks by len(kernel) - 1) or "SAME" (zero padding, output the
      size of the input, as `jax.lax.conv` pads).
    dims: the number of spatial axes before the channel axis (2 images, 3 volumes).

  Returns:
    The filtered images `[..., H', W', C]` (volumes `[..., D', H', W', C]`).
  """
  if dims not in (2, 3):
    raise ValueError(f"filter_separable filters 2 or 3 spatial axes, got dims={dims}.")
  taps, x = _taps_and_padded(x, kernel, padding, spatial=tuple(range(-dims - 1, -1)))
  *lead, w, c = x.shape
  planes = x.reshape(*lead, w * c)
  if dims == 3:  # depth first, evaluated into memory (see `materialized`)
    planes = materialized(lambda p: _shift_filter(p, taps, -3, 1), planes)
  planes = _shift_filter(planes, taps, -2, 1)
  planes = materialized(lambda p: _shift_filter(p, taps, -1, c), planes)
  return planes.reshape(*planes.shape[:-1], w - len(taps) + 1, c)


def filter_window(x: jax.Array, window: np.ndarray, *, dims: int = 2) -> jax.Array:
  """'valid' correlation of every channel of `x` `[..., H, W, C]` with a window: 1-D taps
  (`filter_separable`, also for volumes `[..., D, H, W, C]` with `dims=3`) or a 2-D table (a
  depthwise convolution at full float32 precision; images only)."""
  window = np.asarray(window)
  if window.ndim == 1:
    return filter_separable(x, window, dims=dims)
  if dims != 2:
    raise ValueError(
      f"a {window.ndim}-D window table filters images only; give volumes 1-D taps (applied "
      "along each axis)."
    )
  *lead, h, w, c = x.shape
  rhs = jnp.broadcast_to(jnp.asarray(window, x.dtype)[:, :, None, None], (*window.shape, 1, c))
  out = jax.lax.conv_general_dilated(
    x.reshape(-1, h, w, c),
    rhs,
    window_strides=(1, 1),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=c,
    precision=jax.lax.Precision.HIGHEST,
  )
  return out.reshape(*lead, *out.shape[1:])


def wang_downsample(x: jax.Array) -> jax.Array:
  """The automatic downsampling of Wang's `ssim.m` on `[B, H, W, C]`.

  F = max(1, round(min(H, W) / 256)) (halves rounded up, as MATLAB's `round`); an F x F mean
  filter with symmetric (mirrored, edge included) borders, centred as MATLAB's `imfilter(...,
  'same')` centres an even filter (the output at i averages i - floor((F - 1) / 2) ... i +
  ceil((F - 1) / 2)), then every F-th pixel from the first. F = 1 returns `x`.
  """
  _, h, w, _ = x.shape
  f = max(1, int(np.floor(min(h, w) / 256 + 0.5)))
  if f == 1:
    return x
  before = (f - 1) // 2
  pads = ((0, 0), (before, f - 1 - before), (before, f - 1 - before), (0, 0))
  padded = jnp.pad(x, pads, mode="symmetric")
  rows = sum(padded[:, i : i + h : f] for i in range(f))
  return sum(rows[:, :, j : j + w : f] for j in range(f)) * (1.0 / (f * f))


def filter_planes(x: jax.Array, kernel: np.ndarray, *, padding: str = "VALID") -> jax.Array:
  """Correlates the last two axes of `x` `[..., H, W]` with the outer product `kernel x kernel`.

  Args:
    x: planes `[..., H, W]` (e.g. `[B, C, H, W]`).
    kernel: 1-D taps, applied along H and then along W.
    padding: "VALID" (each side shrinks by len(kernel) - 1) or "SAME" (zero padding, output the
      size of the input, as `jax.lax.conv` pads).

  Returns:
    The filtered planes `[..., H', W']`.
  """
  return filter_separable(x[..., None], kernel, padding=padding)[..., 0]


def _taps_and_padded(x, kernel, padding, spatial):
  """The taps as Python floats (folded into the code), and `x` zero-padded for "SAME"."""
  taps = tuple(float(t) for t in np.asarray(kernel).ravel())
  if padding == "SAME":
    low = (len(taps) - 1) // 2
    pads = [(0, 0)] * x.ndim
    for axis in spatial:
      pads[axis] = (low, len(taps) - 1 - low)
    x = jnp.pad(x, pads)
  elif padding != "VALID":
    raise ValueError(f'padding must be "VALID" or "SAME", got {padding!r}.')
  if min(x.shape[a] for a in spatial) < len(taps):
    raise ValueError(
      f"images of size {tuple(x.shape[a] for a in spatial)} are smaller than the {len(taps)}-tap "
      'kernel; use padding="SAME" or a shorter kernel.'
    )
  return taps, x


def materialized(f, x: jax.Array) -> jax.Array:
  """`f(x)`, computed once into a buffer that its consumers read, in programs lowered for CPU.

  XLA:CPU fuses a cheap producer (here the last filter pass, slices and adds) into each consumer
  and recomputes it there. SSIM's gradient needs all four filtered statistics at every output of
  each of four cotangent planes, so the 11-tap sum was evaluated 4-5 times over; forward and
  backward took 3x longer. On CPU `f` and its transpose run inside a conditional, a fusion
  boundary for XLA, whose predicate is hidden behind an optimization barrier (so it is not
  folded away); both branches are `f`, so the predicate's value does not matter. Programs
  lowered for GPU or TPU call `f` plainly (`lowering.per_platform`). Supports `grad` and `vmap`,
  not forward-mode `jvp`.
  """
  return _materialized(f, x)


def _in_conditional(f, x):
  return jax.lax.cond(jax.lax.optimization_barrier(np.bool_(True)), f, f, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _materialized(f, x):
  return lowering.per_platform((x,), cpu=lambda x: _in_conditional(f, x), default=f)


def _materialized_fwd(f, x):
  return _materialized(f, x), jax.vjp(f, x)[1]  # f's own primal is dead code


def _materialized_bwd(f, vjp, ct):
  transpose = lambda vjp, ct: vjp(ct)[0]
  cpu = lambda vjp, ct: _in_conditional(lambda c: transpose(vjp, c), ct)
  return (lowering.per_platform((vjp, ct), cpu=cpu, default=transpose),)


_materialized.defvjp(_materialized_fwd, _materialized_bwd)


def _shift_sum(x: jax.Array, taps: tuple[float, ...], axis: int, step: int) -> jax.Array:
  """'valid' correlation along `axis`, taps `step` elements apart, as a sum of shifted slices.

  XLA fuses the slices into one loop. With `step` = C on a `[..., W * C]` axis this filters
  each channel along W.
  """
  size = x.shape[axis] - (len(taps) - 1) * step
  out = None
  for i, t in enumerate(taps):
    term = t * jax.lax.slice_in_dim(x, i * step, i * step + size, axis=axis % x.ndim)
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _shift_filter(x: jax.Array, taps: tuple[float, ...], axis: int, step: int) -> jax.Array:
  return _shift_sum(x, taps, axis, step)


def _shift_filter_fwd(x, taps, axis, step):
  return _shift_sum(x, taps, axis, step), None


def _shift_filter_bwd(taps, axis, step, _, ct):
  # The transpose of 'valid' correlation is 'full' convolution: zero-pad by (len - 1) taps on both
  # sides and correlate with the reversed taps; one fused loop, like the forward pass. Evaluated
  # once into memory, as the forward's second pass: otherwise XLA fuses the 11-tap sum into its
  # consumers and recomputes it there. MS-SSIM's gradient sums every scale's filtered cotangents
  # per input pixel through the pooling transposes, and recomputed each coarse scale's sums for
  # every fine pixel: one fusion took 450 of 650 ms (B=32 192x192 RGB); now 360-460 ms in all.
  pads = [(0, 0, 0)] * ct.ndim
  reach = (len(taps) - 1) * step
  pads[axis % ct.ndim] = (reach, reach, 0)
  full = lambda t: _shift_sum(jax.lax.pad(t, jnp.zeros((), t.dtype), pads), taps[::-1], axis, step)
  return (materialized(full, ct),)


_shift_filter.defvjp(_shift_filter_fwd, _shift_filter_bwd)


def avg_pool(x: jax.Array, *, factor: int = 2, odd: str = "drop") -> jax.Array:
  """Non-overlapping `factor x factor` mean pooling of `[B, H, W, C]` (volumes `[B, D, H, W, C]`:
  `factor^3` blocks).

  Args:
    x: images `[B, H, W, C]` or volumes `[B, D, H, W, C]`.
    factor: the pooling window and stride along every spatial axis.
    odd: what happens to sizes not divisible by `factor`: "drop" drops the trailing rows and
      columns (output `floor(H / factor)`); "pad" zero-pads `H % factor` rows at the start (and
      the same at the end, unused), and averages the zeros in, as PyTorch's
      `avg_pool2d(x, factor, padding=H % factor)` used by pytorch_msssim does for factor 2
      (output `ceil(H / factor)` for factor 2); "replicate" repeats the last row and column up
      to a multiple of `factor`, as TensorFlow's `ssim_multiscale` (output `ceil(H / factor)`).

  Returns:
    The pooled images.
  """
  spatial = x.shape[1:-1]
  if odd == "pad":
    x = jnp.pad(x, [(0, 0), *((s % factor, s % factor) for s in spatial), (0, 0)])
  elif odd == "replicate":
    x = jnp.pad(x, [(0, 0), *((0, -s % factor) for s in spatial), (0, 0)], mode="edge")
  elif odd != "drop":
    raise ValueError(f'odd must be "drop", "pad" or "replicate", got {odd!r}.')
  b, *spatial, c = x.shape
  pooled = [s // factor for s in spatial]
  x = x[(slice(None), *(slice(0, s * factor) for s in pooled))]
  blocks = x.reshape(b, *(v for s in pooled for v in (s, factor)), c)
  # A sum of the factor^d strided views, evaluated once into a buffer (see `materialized`), not
  # `mean(axis=(2, 4))`, which XLA:CPU hands to a library reduction; unmaterialized, XLA fuses
  # the sum into every consumer. MS-SSIM B=32 192x192, forward + gradient: -31 %.
  offsets = list(np.ndindex(*(factor,) * len(pooled)))

  def pool(v):
    views = [v[(slice(None), *(k for o in at for k in (slice(None), o)))] for at in offsets]
    return sum(views[1:], views[0]) * (1.0 / factor ** len(pooled))

  return materialized(pool, blocks)
