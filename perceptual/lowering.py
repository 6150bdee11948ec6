"""Program pieces chosen per platform when a program is lowered, not when it is traced.

Some of the metrics' speed on CPU comes from program structure that only XLA:CPU wants: chunked
evaluation of a batch in a loop (`batching`), and fusion boundaries that stop XLA from
recomputing a cheap producer inside every consumer (`filters.materialized`). On GPU and TPU both
would cost time (a loop serialises the batch; a conditional is a host round trip and a break in
CUDA graphs). Which platform a program runs on is known only when it is lowered: one traced
function may be lowered for "cpu" here and for "cuda" by `jax.export`, and the host's default
backend says nothing about either. So the choice is a primitive with one lowering rule for CPU
and one for every other platform:

`per_platform(operands, cpu=, default=)` is `cpu(*operands)` in programs lowered for CPU and
`default(*operands)` elsewhere. Both must compute the same values with the same output shapes.
It is not differentiable: it is meant for the inside of custom VJPs (their primal, forward and
backward functions), which say how to differentiate it. `vmap` works.

A program lowered for several platforms at once (`jax.export(..., platforms=("cpu", "cuda"))`)
holds both versions and a switch on the platform, which JAX resolves before compilation.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax._src import dispatch  # apply_primitive: how JAX runs its own primitives eagerly
from jax.extend import core
from jax.interpreters import batching, mlir


def _lower_jaxpr(jaxpr: core.ClosedJaxpr):
  return mlir.lower_fun(core.jaxpr_as_fun(jaxpr), multiple_results=True)


per_platform_p = core.Primitive("per_platform")
per_platform_p.multiple_results = True
per_platform_p.def_abstract_eval(lambda *_, cpu, default: default.out_avals)
# Called outside `jit`, it is compiled (and cached) as a one-primitive program, lowered for the
# platform that runs it.
per_platform_p.def_impl(functools.partial(dispatch.apply_primitive, per_platform_p))
mlir.register_lowering(per_platform_p, lambda ctx, *a, cpu, default: _lower_jaxpr(default)(ctx, *a))
mlir.register_lowering(
  per_platform_p, lambda ctx, *a, cpu, default: _lower_jaxpr(cpu)(ctx, *a), platform="cpu"
)


def per_platform(operands: tuple, *, cpu: Callable[..., Any], default: Callable[..., Any]) -> Any:
  """`cpu(*operands)` in a program lowered for CPU, `default(*operands)` in one lowered for
  another platform. `operands` and both results are pytrees of arrays; the results must agree in
  structure, shapes and dtypes (and, up to rounding, in values)."""
  leaves, tree = jax.tree.flatten(operands)
  traced = []
  for branch in (cpu, default):
    flat = lambda *flat, branch=branch: branch(*jax.tree.unflatten(tree, flat))
    traced.append(jax.make_jaxpr(flat, return_shape=True)(*leaves))
  (cpu_jaxpr, cpu_shape), (default_jaxpr, default_shape) = traced
  if jax.tree.structure(cpu_shape) != jax.tree.structure(default_shape) or (
    cpu_jaxpr.out_avals != default_jaxpr.out_avals
  ):
    raise ValueError(
      "per_platform: the CPU and default branches return different structures or shapes: "
      f"{cpu_shape} vs {default_shape}."
    )
  # Values the branches close over (tracers of an enclosing trace among them) become arguments.
  consts = [*cpu_jaxpr.consts, *default_jaxpr.consts]
  split = len(cpu_jaxpr.consts)

  def with_consts(jaxpr, lo, hi):
    def run(*values):
      closed = core.ClosedJaxpr(jaxpr.jaxpr, values[lo:hi])
      return core.jaxpr_as_fun(closed)(*values[len(consts) :])

    return jax.make_jaxpr(run)(*consts, *leaves)

  out = per_platform_p.bind(
    *consts,
    *leaves,
    cpu=with_consts(cpu_jaxpr, 0, split),
    default=with_consts(default_jaxpr, split, len(consts)),
  )
  return jax.tree.unflatten(jax.tree.structure(default_shape), out)


def _per_platform_batching(args, dims, *, cpu, default):
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  mapped = lambda jaxpr: jax.vmap(core.jaxpr_as_fun(jaxpr), in_axes=tuple(dims), axis_size=size)
  out = per_platform(tuple(args), cpu=mapped(cpu), default=mapped(default))
  return out, [0] * len(out)


batching.primitive_batchers[per_platform_p] = _per_platform_batching
