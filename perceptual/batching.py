"""Per-image metrics evaluated over a large batch in cache-sized chunks (on CPU).

The metrics are chains of elementwise loops over full-size planes (filtered statistics, block
transforms), so on CPU they run at memory speed once the working set leaves the cache: SSIM of
128 colour 64x64 images took 9x as long as of 128 grey ones, not 3x. Evaluating the batch a few
images at a time keeps every intermediate in cache. `map_batch` does this with `lax.map` and a
custom VJP. For one value per image (every metric) and nothing shared to differentiate, the
forward pass under differentiation computes each chunk's values and input gradients together,
while the chunk is in cache (image i's gradient is its cotangent times the gradient of its own
value), and the backward pass only scales them. Otherwise (per-pixel outputs such as the SSIM map,
or gradients w.r.t. shared arguments such as Watson parameters being fitted) the backward pass
recomputes each chunk's forward and gradient, summing the shared gradients over chunks. Only
programs lowered for CPU are chunked (`lowering.per_platform`): those lowered for GPU or TPU
evaluate the whole batch at once, with no loop, as do batches that fit one chunk.

With one device, chunks are contiguous runs of the batch (a free reshape). With several, chunk k
holds images k, k + n, k + 2n, ... of a batch split into n chunks, so that a batch sharded over
devices (contiguous blocks) gives every device its share of every chunk and stays sharded (the
interleaving costs a transpose of every input and gradient). A batch that is not a multiple of the
chunk is padded with copies of its last image, whose values are dropped and whose cotangents are
zero. Being a `custom_vjp`, a chunked call supports `grad`/`vjp`, `jit` and `vmap`, not forward-mode
`jvp`.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from perceptual import lowering

# Elements of one image's largest input per chunk. Measured on one core of an AMD EPYC (B = 128,
# 64x64, forward + gradient): SSIM, MS-SSIM and Watson-DFT run 2-3x faster with chunks of 2^14-2^16
# elements than on the whole batch; see eval/benchmark_metrics.py.
CHUNK_ELEMENTS = 2**15


def images_per_chunk(batch: int, elements_per_image: int) -> int:
  """How many images `map_batch` evaluates at once in a program lowered for CPU."""
  return max(1, min(batch, CHUNK_ELEMENTS // max(elements_per_image, 1)))


def map_batch(fn: Callable[[Any, Any], Any], batched: Any, *, shared: Any = ()) -> Any:
  """`fn(batched, shared)`, evaluated chunk by chunk along the leading (batch) axis on CPU.

  Args:
    fn: a function of a pytree of per-image arrays `[b, ...]` and a pytree of shared arrays,
      returning a pytree of per-image results `[b, ...]`; image i's results may depend only on
      image i's inputs (and `shared`).
    batched: pytree of float arrays with the same leading axis B (None leaves are kept).
    shared: pytree of float arrays used by every chunk.

  Returns:
    `fn(batched, shared)`: per-image results `[B, ...]`.
  """
  leaves, tree = jax.tree.flatten(batched)
  batch = leaves[0].shape[0]
  elements = max(leaf.size // max(batch, 1) for leaf in leaves)
  # A multiple of the device count, so that a batch sharded over devices stays sharded: chunk k
  # holds images k, k + count, k + 2 count, ..., the same number from every device's block.
  devices = jax.device_count()
  chunk = devices * -(-images_per_chunk(batch, elements) // devices)
  if chunk >= batch:
    return fn(batched, shared)
  count = -(-batch // chunk)
  extra = count * chunk - batch

  def split(tree, pad_mode):
    def one(v):
      if extra:
        v = jnp.pad(v, [(0, extra)] + [(0, 0)] * (v.ndim - 1), mode=pad_mode)
      if devices == 1:
        return v.reshape(count, chunk, *v.shape[1:])  # contiguous chunks: a free reshape
      return jnp.swapaxes(v.reshape(chunk, count, *v.shape[1:]), 0, 1)

    return jax.tree.map(one, tree)

  def merge(tree):
    if devices == 1:
      return jax.tree.map(lambda v: v.reshape(-1, *v.shape[2:])[:batch], tree)
    return jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1).reshape(-1, *v.shape[2:])[:batch], tree)

  def in_chunks(per_chunk, *trees):
    """`per_chunk(*trees)` on CPU as a loop over chunks; elsewhere on the whole batch."""
    looped = lambda *trees: merge(
      jax.lax.map(lambda parts: per_chunk(*parts), split(trees, "edge"))
    )
    return lowering.per_platform(trees, cpu=looped, default=per_chunk)

  @jax.custom_vjp
  def chunked(batched, shared):
    return in_chunks(lambda part: fn(part, shared), batched)

  def chunked_fwd(batched, shared):
    (batched, batched_perturbed), (shared, shared_perturbed) = _unwrap(batched), _unwrap(shared)
    out = jax.eval_shape(fn, batched, shared)
    if any(jax.tree.leaves(shared_perturbed)) or not _one_value_per_image(out, batch):
      return chunked(batched, shared), (batched, shared, None)
    # One value per image and nothing shared to differentiate: image i's gradient is the
    # cotangent i times the gradient of its value, so each chunk's value and gradient are computed
    # together, while the chunk is in cache, and the backward pass only scales them.
    leaves = jax.tree.leaves(batched)
    wanted = [i for i, p in enumerate(jax.tree.leaves(batched_perturbed)) if p]

    def value_and_grads(part):
      def of_wanted(wanted_leaves):
        part_leaves = list(part)
        for i, leaf in zip(wanted, wanted_leaves, strict=True):
          part_leaves[i] = leaf
        return fn(jax.tree.unflatten(tree, part_leaves), shared)

      value, vjp = jax.vjp(of_wanted, [part[i] for i in wanted])
      return value, vjp(jnp.ones_like(value))[0]

    value, grads = in_chunks(value_and_grads, leaves)
    per_leaf = [None] * len(leaves)
    for i, grad in zip(wanted, grads, strict=True):
      per_leaf[i] = grad
    return value, (None, None, per_leaf)

  def chunked_bwd(residuals, ct):
    batched, shared, grads = residuals
    if grads is not None:
      scale = lambda g: g * ct.reshape(-1, *[1] * (g.ndim - 1)).astype(g.dtype)
      return jax.tree.unflatten(tree, [None if g is None else scale(g) for g in grads]), None

    def whole(batched, ct):
      _, vjp = jax.vjp(fn, batched, shared)
      return vjp(ct)

    def looped(batched, ct):
      def step(total, part_and_ct):
        d_part, d_shared = whole(*part_and_ct)
        return jax.tree.map(jnp.add, total, d_shared), d_part

      zeros = jax.tree.map(jnp.zeros_like, shared)
      parts = (split(batched, "edge"), split(ct, "constant"))
      d_shared, d_parts = jax.lax.scan(step, zeros, parts)
      return merge(d_parts), d_shared

    return lowering.per_platform((batched, ct), cpu=looped, default=whole)

  chunked.defvjp(chunked_fwd, chunked_bwd, symbolic_zeros=True)
  return chunked(batched, shared)


def _unwrap(tree):
  """The values and the perturbed flags of a custom VJP's `symbolic_zeros` primal inputs."""
  is_primal = lambda v: isinstance(v, jax.custom_derivatives.CustomVJPPrimal)
  values = jax.tree.map(lambda p: p.value, tree, is_leaf=is_primal)
  return values, jax.tree.map(lambda p: p.perturbed, tree, is_leaf=is_primal)


def _one_value_per_image(out, batch: int) -> bool:
  return isinstance(out, jax.ShapeDtypeStruct) and out.shape == (batch,)
