"""Speed and memory of the metrics: the setup of Czolbe et al. 2020, Table 1.

    python -m eval.benchmark_metrics --threads=1                     # ours and dm_pix only
    python -m eval.benchmark_metrics --threads=1 \\
        --peers-python=/work/main/.venv-ref/bin/python               # + pytorch_msssim and piq
    python -m eval.benchmark_metrics --losses l2 ssim gmsd --runs=30

Setup: B=128 images of 64x64, grey (C=1) and colour (C=3), and MS-SSIM on B=32 of 192x192;
float32; forward plus the gradient w.r.t. the input y (x is the reference); jitted; timed after a
warm-up call. Every `perceptual.LOSSES` entry that takes the channel count is timed, plus l1/l2;
`ratio` is its median time over L2's in the same run. Times are milliseconds per iteration, the
median and the best of `--runs`, wall clock and process CPU time (CPU time is the fairer figure
on a loaded machine).

Peers run in the same interleaved loop (ours, then each peer, every repetition): dm_pix in this
process; pytorch_msssim and piq in a subprocess of `--peers-python` (torch lives in another venv),
which serves one timed call per request, so both sides see the same load. `speed-up` is the peer's
median over ours. `reference.watson_dft` is the authors' Watson-DFT computation (rfft2 of 8x8
blocks, atan2 / acos phase, per-channel loop) written in torch from ../shared/reference/WATSON.md,
so that it can be timed on the machine at hand.

Peak memory: ours is XLA's compiled `memory_analysis()` (arguments + outputs + temporaries:
exactly what the executable allocates). A torch peer's figure (marked *) is the growth of the
server process's peak resident set (`ru_maxrss`) over its first call of that case: an upper
bound that includes allocator slack, and 0 when an earlier, larger case already set the peak
(run one case per process with `--losses` for a clean figure).

`--threads=1` sets XLA_FLAGS="--xla_cpu_multi_thread_eigen=false"
before jax is imported and `torch.set_num_threads(1)` in the peer.

Allocator: by default both processes run with glibc told to keep freed memory
(`train.xla_cpu.reuse_freed_memory()` here, its environment equivalent `MALLOC_ENV` in the peer),
as every `python -m train.<model>` runs. With glibc's defaults XLA's per-call buffers, allocated
on its own threads, were sometimes handed back to the system and faulted in again on each call:
3,407 page faults and +10 ms (41 instead of 31) per colour Watson-DFT call, depending on the
process's earlier allocations. `--malloc=default` measures with the defaults on both sides.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import perceptual
from train import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUBS = os.path.join(ROOT, "tools", "golden", "stubs")
SKIP_BY_DEFAULT = ("lpips_alex", "lpips_vgg", "deepsim")  # pretrained nets: minutes per case

# The peer side: a tiny server run by --peers-python. One JSON request per line:
# {"case": [name, b, h, c]} -> {"ms": wall, "cpu_ms": cpu} for one forward + backward call.
PEER_SERVER = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.environ["STUBS"])
import torch
if os.environ.get("THREADS") == "1":
  torch.set_num_threads(1)
import pytorch_msssim, piq
try:
  import piqa
except ImportError:
  piqa = None
DEVICE = torch.device(os.environ.get("DEVICE", "cpu"))
CUDA = DEVICE.type == "cuda"
EPS = 1e-10
def watson_dft_reference(x, y):
  # The authors' Watson-DFT as ../shared/reference/WATSON.md describes it (written from that
  # description; their code is not copied): per channel (YCbCr for colour), 8x8 blocks, rfft2 / 64,
  # tensor parameters of a trained set's shapes (values matter little for the time).
  c = x.shape[1]
  if c == 3:
    m = [[.299, .587, .114], [-.1687, -.3313, .5], [.5, -.4187, -.0813]]
    m = torch.tensor(m, device=DEVICE)
    off = torch.tensor([0.0, 0.5, 0.5], device=DEVICE).view(1, 3, 1, 1)
    x, y = torch.einsum("ij,bjhw->bihw", m, x) + off, torch.einsum("ij,bjhw->bihw", m, y) + off
  weights = torch.softmax(torch.zeros(3), 0) if c == 3 else torch.ones(1)
  t, alpha, w, beta = torch.ones(8, 5, device=DEVICE), 0.15, 0.3, 0.6
  w_phase = torch.full((8, 5), 0.1, device=DEVICE)
  w_phase[0, 0] = w_phase[0, 4] = w_phase[4, 0] = w_phase[4, 4] = 0.0
  def blocks(z):
    b, h, w_ = z.shape
    return z.reshape(b, h // 8, 8, w_ // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)
  total = 0.0
  for ch in range(c):
    f0, f1 = torch.fft.rfft2(blocks(x[:, ch])) / 64, torch.fft.rfft2(blocks(y[:, ch])) / 64
    a0 = torch.sqrt((f0.real + EPS) ** 2 + (f0.imag + EPS) ** 2)
    a1 = torch.sqrt((f1.real + EPS) ** 2 + (f1.imag + EPS) ** 2)
    lum = a0[..., 0, 0].mean()
    tl = t * (((a0[..., 0, 0] + EPS) / (lum + EPS)) ** alpha)[..., None, None]
    contrast = (a0 + EPS) ** w * tl ** (1 - w)
    e_tl, e_c = torch.exp(tl), torch.exp(contrast)
    s = (tl * e_tl + contrast * e_c) / (e_tl + e_c)
    d = (torch.abs(a0 - a1) / s + EPS) ** beta + EPS
    watson = d.sum((1, 2, 3)) ** (1 / beta)
    ph0 = torch.atan2(f0.imag, f0.real + EPS)
    ph1 = torch.atan2(f1.imag, f1.real + EPS)
    phase = (w_phase * torch.acos(torch.cos(ph0 - ph1) * (1 - 1e-7))).sum((1, 2, 3))
    total = total + weights[ch] * (watson + phase)
  return total
def make(name, b, *spatial_c):
  *spatial, c = spatial_c  # images (h, w) or volumes (d, h, w)
  g = torch.Generator().manual_seed(0)
  x = torch.rand(b, c, *spatial, generator=g).to(DEVICE)
  y = torch.rand(b, c, *spatial, generator=g).to(DEVICE).requires_grad_(True)
  if name == "pytorch_msssim.ssim":
    f = lambda: 1 - pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
  elif name == "pytorch_msssim.ms_ssim":
    f = lambda: 1 - pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
  elif name == "reference.watson_dft":
    f = lambda: watson_dft_reference(x, y)
  elif name == "piq.gmsd":
    f = lambda: piq.gmsd(x, y, data_range=1.0, reduction="none")
  elif name == "piqa.ssim":
    module = piqa.SSIM(n_channels=c, reduction="none").to(DEVICE)
    f = lambda: 1 - module(x, y)
  elif name == "piqa.ms_ssim":
    module = piqa.MS_SSIM(n_channels=c, reduction="none").to(DEVICE)
    f = lambda: 1 - module(x, y)
  else:
    raise KeyError(name)
  def step():
    y.grad = None
    f().sum().backward()
    if CUDA:
      torch.cuda.synchronize()
  return step
def peak_mb(step):  # one call's peak: CUDA's allocator peak, or the growth of the peak RSS
  if CUDA:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_allocated() / 2**20
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  step()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
cache = {}
for line in sys.stdin:
  req = json.loads(line)
  if "versions" in req:
    out = {"torch": torch.__version__, "piq": piq.__version__, "device": str(DEVICE),
           "pytorch_msssim": getattr(pytorch_msssim, "__version__", "?"),
           "piqa": getattr(piqa, "__version__", None)}
  else:
    key = tuple(req["case"])
    if key not in cache:
      cache[key] = make(*key)
      cache[key + ("mem",)] = peak_mb(cache[key])
    w, c = time.perf_counter(), time.process_time()
    cache[key]()
    out = {"ms": (time.perf_counter() - w) * 1e3, "cpu_ms": (time.process_time() - c) * 1e3,
           "mem_mb": cache[key + ("mem",)]}
  print(json.dumps(out), flush=True)
"""

PEERS = {  # our registry name -> peer implementations of the same metric
  "ssim": ("pytorch_msssim.ssim", "piqa.ssim", "dm_pix.ssim"),
  "ms_ssim": ("pytorch_msssim.ms_ssim", "piqa.ms_ssim"),
  "gmsd": ("piq.gmsd",),
  "watson_dft": ("reference.watson_dft",),  # the authors' formula in torch, see PEER_SERVER
}
# Median ms measured on this CPU, one core, before this library (issue 2), grey / colour.
PEERS_TODAY = (
  "SSIM pytorch_msssim 315 / 194, dm_pix 294 / 967; GMSD piq 19 / 46; authors' Watson-DFT 71 / 262;"
  " MS-SSIM B=32 192x192 pytorch_msssim 1692 / 1588"
)


class Peers:
  """The torch peers in a subprocess, one timed call per request."""

  def __init__(self, python: str, *, threads: int, tuned_malloc: bool, device: str = "cpu"):
    env = dict(os.environ, STUBS=STUBS, THREADS=str(threads), DEVICE=device)
    if tuned_malloc:
      env.update(xla_cpu.MALLOC_ENV)
    self.proc = subprocess.Popen(
      [python, "-c", PEER_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )

  def ask(self, request: dict) -> dict:
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the peer subprocess died; run it by hand to see its error.")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def _ours(name: str):
  if name in ("l1", "l2"):
    return {"l1": perceptual.mae, "l2": perceptual.mse}[name], None
  loss = perceptual.LOSSES[name]
  return loss, loss


def _jitted(name: str, channels: int):
  """(timed call, its memory in MB) of loss `name`: forward + grad w.r.t. y, jitted."""
  fn, loss = _ours(name)
  params = loss.params(channels) if loss is not None else None

  def value_and_grad(y, x, params):
    if loss is None:
      return jax.value_and_grad(lambda y: jnp.sum(fn(x, y)))(y)
    return jax.value_and_grad(lambda y: jnp.sum(loss(x, y, params=params)))(y)

  return jax.jit(value_and_grad), params


def _dm_pix_ssim():
  import dm_pix

  return jax.jit(jax.value_and_grad(lambda y, x, _: jnp.sum(1.0 - dm_pix.ssim(x, y))))


def _memory_mb(compiled) -> float:
  m = compiled.memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return total / 2**20


def _cpu_s(call) -> float:
  c = time.process_time()
  jax.block_until_ready(call())
  return time.process_time() - c


def _time(call) -> tuple[float, float]:
  w, c = time.perf_counter(), time.process_time()
  jax.block_until_ready(call())
  return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3


def machine_rates() -> tuple[float, float]:
  """Peak float32 FLOP/s (an in-cache matrix product) and copy bytes/s, by CPU time.

  The peak is what a 384x384 float32 GEMM reaches: every FMA unit busy on every cycle. (An
  earlier probe timed a chain of dependent FMAs, which measures FMA latency, 1/6 of this rate here,
  and gave "bounds" the metrics ran faster than.) Process CPU time, best of several calls: on a
  loaded machine wall time measures the queue. With all threads it sums the cores, so the rate is
  per core-second either way.
  """
  a = jnp.full((384, 384), 0.5, jnp.float32)
  gemm = jax.jit(lambda a: jnp.dot(a, a, precision=jax.lax.Precision.HIGHEST))
  jax.block_until_ready(gemm(a))
  best = min(_cpu_s(lambda: gemm(a)) for _ in range(20))
  flops = 2 * a.shape[0] ** 3 / best
  big = jnp.ones((1 << 26,), jnp.float32)  # 256 MB
  copy = jax.jit(lambda a: a + 1.0)
  jax.block_until_ready(copy(big))
  best = min(_cpu_s(lambda: copy(big)) for _ in range(5))
  return flops, 2 * big.nbytes / best


def ssim_flops_per_pixel(taps: int = 11, dims: int = 2) -> int:
  """FLOPs per pixel (voxel) of SSIM value + gradient w.r.t. y with separable filters.

  Forward: 4 planes (x, y, x^2 + y^2, xy) x `dims` passes x taps FMAs (2 FLOPs) + ~25
  elementwise; backward: the transposed filters of the 3 planes that depend on y + ~40
  elementwise.
  """
  return (4 + 3) * dims * taps * 2 + 25 + 40


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=0, help="1: one core (set before imports)")
  parser.add_argument("--runs", type=int, default=15, help="timed repetitions per case")
  parser.add_argument("--losses", nargs="*", default=None, help="default: all but deep nets")
  parser.add_argument("--peers-python", default="", help="python of a venv with torch peers")
  parser.add_argument("--no-ms-ssim-case", action="store_true")
  parser.add_argument("--no-volume-case", action="store_true", help="skip B=8 64^3 grey volumes")
  parser.add_argument(
    "--large",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="also SSIM / MS-SSIM of one 1080x1920 and one 2160x3840 RGB image (default: on GPU/TPU)",
  )
  parser.add_argument(
    "--scaling",
    action="store_true",
    help="also time ssim, ms_ssim, gmsd, watson_dft on grey 64..512 px images (2^19 pixels each)",
  )
  parser.add_argument(
    "--malloc",
    choices=("tuned", "default"),
    default="default",
    help="default: glibc as a library user has it; tuned: glibc keeps freed memory, here and in "
    "the peer (train.xla_cpu, as python -m train.<model> runs)",
  )
  args = parser.parse_args(argv)
  # Before the first computation starts JAX's backend: XLA reads its flags once.
  if args.threads == 1:
    xla_cpu.one_thread()
  if args.malloc == "tuned":
    xla_cpu.reuse_freed_memory()

  names = args.losses or ["l1", "l2"] + [n for n in perceptual.LOSSES if n not in SKIP_BY_DEFAULT]
  if "l2" not in names:
    names = ["l2"] + names
  on_accelerator = jax.default_backend() != "cpu"
  peers = (
    Peers(
      args.peers_python,
      threads=args.threads,
      tuned_malloc=args.malloc == "tuned",
      device="cuda" if jax.default_backend() == "gpu" else "cpu",
    )
    if args.peers_python
    else None
  )
  compile_s = {}
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or '?'}")
  print(
    f"threads: {'1 (XLA_FLAGS=' + os.environ['XLA_FLAGS'] + ')' if args.threads == 1 else 'all'}; "
    f"cpus {os.cpu_count()}; load average {os.getloadavg()}; malloc {args.malloc}"
  )
  peer_versions = peers.ask({"versions": 1}) if peers else {}
  if peers:
    print(f"peers: {peer_versions} via {args.peers_python}")
  try:
    import dm_pix

    print(f"dm_pix {getattr(dm_pix, '__version__', '?')} (in process)")
  except ImportError:
    dm_pix = None

  cases = [(128, 64, 64, 1), (128, 64, 64, 3)]
  if not args.no_ms_ssim_case:
    cases += [(32, 192, 192, 1), (32, 192, 192, 3)]
  if args.large or (args.large is None and on_accelerator):
    cases += [(1, 1080, 1920, 3), (1, 2160, 3840, 3)]
  if not args.no_volume_case:
    cases += [(8, 64, 64, 64, 1)]  # volumes [B, D, H, W, C]: SSIM with a separable 3-D window
  rng = np.random.default_rng(0)
  rows = []
  for shape in cases:
    b, *spatial, c = shape
    h, w = spatial[-2:]
    x = jnp.asarray(rng.random(shape, np.float32))
    y = jnp.asarray(rng.random(shape, np.float32))
    if len(spatial) == 3:  # volumes (MS-SSIM's 11-tap, 5-scale minimum is 161 per side)
      case_names = [n for n in ("l2", "ssim") if n in names]
    elif b == 1:  # one large photograph: the structural metrics
      case_names = [n for n in ("l2", "ssim", "ms_ssim") if n in names]
    elif h == 192:
      case_names = [n for n in ("l2", "ms_ssim") if n in names]
    else:
      case_names = [n for n in names if n in ("l1", "l2") or c in perceptual.LOSSES[n].channels]
    contenders = {}  # label -> (call, memory MB or None, metric)
    for name in case_names:
      f, params = _jitted(name, c)
      start = time.perf_counter()
      compiled = f.lower(y, x, params).compile()
      compile_s[(*shape, name)] = time.perf_counter() - start
      contenders[name] = ((lambda f=f, p=params, x=x, y=y: f(y, x, p)), _memory_mb(compiled), name)
      for peer in PEERS.get(name, ()) if name != "ms_ssim" or min(h, w) > 160 else ():
        if peer == "dm_pix.ssim" and dm_pix is not None and b > 1 and len(spatial) == 2:
          g = _dm_pix_ssim()
          mem = _memory_mb(g.lower(y, x, None).compile())
          contenders[peer] = ((lambda g=g, x=x, y=y: g(y, x, None)), mem, name)
        elif peers and peer.startswith(("pytorch_msssim", "piq", "reference.")):
          if peer.startswith("piqa.") and not peer_versions.get("piqa"):
            continue
          if peer.startswith("piqa.") and len(spatial) == 3:  # piqa has no 3-D mode
            continue
          request = {"case": [peer, *shape]}
          contenders[peer] = ((lambda r=request: peers.ask(r)), None, name)
    times = {label: [] for label in contenders}
    peer_mem = {}
    for label, (call, _, _) in contenders.items():  # warm-up (compile, caches)
      out = call()
      if isinstance(out, dict):
        peer_mem[label] = out["mem_mb"]
      else:
        jax.block_until_ready(out)
    for _ in range(args.runs):  # interleaved: every contender once per repetition
      for label, (call, _, _) in contenders.items():
        if label in peer_mem:
          out = call()
          times[label].append((out["ms"], out["cpu_ms"]))
        else:
          times[label].append(_time(call))
    l2 = np.median([t[0] for t in times["l2"]])
    for label, (_, mem, metric) in contenders.items():
      t = np.array(times[label])
      rows.append(
        dict(
          case=f"B={b} {'x'.join(map(str, spatial))}x{c}",
          shape=shape,
          label=label,
          metric=metric,
          channels=c,
          med=float(np.median(t[:, 0])),
          best=float(t[:, 0].min()),
          cpu=float(np.median(t[:, 1])),
          ratio=float(np.median(t[:, 0]) / l2),
          mem=mem if mem is not None else peer_mem.get(label),
          mem_kind="xla" if mem is not None else "peer",
          compile_s=compile_s.get((*shape, label)),
        )
      )
  if peers:
    peers.close()
  _print_table(rows, args)
  if args.scaling:
    _print_scaling(args.runs)


def _print_scaling(runs: int, sides=(64, 128, 256, 512)) -> None:
  """ns per pixel of forward + gradient at several image sizes, the same pixel count in each."""
  rng = np.random.default_rng(0)
  print()
  print("cost per pixel vs image size, grey, B x side^2 = 2^19 pixels (wall median, ns/pixel)")
  print(f"{'loss':12s}" + "".join(f"{f'{s}px (B={2**19 // s**2})':>16s}" for s in sides))
  for name in ("ssim", "ms_ssim", "gmsd", "watson_dft"):
    f, params = _jitted(name, 1)
    cells = []
    for side in sides:
      shape = (2**19 // side**2, side, side, 1)
      x, y = (jnp.asarray(rng.random(shape, np.float32)) for _ in range(2))
      jax.block_until_ready(f(y, x, params))
      ms = np.median([_time(lambda f=f, p=params, x=x, y=y: f(y, x, p))[0] for _ in range(runs)])
      cells.append(f"{ms * 1e6 / 2**19:16.1f}")
    print(f"{name:12s}" + "".join(cells))


def _print_table(rows: list[dict], args) -> None:
  print()
  print(
    f"ms per call (forward + grad w.r.t. y, steady state: compiled and warmed up), {args.runs} "
    "interleaved runs; ratio = /L2; compile s = jit lower + compile, reported apart"
  )
  header = (
    f"{'case':20s} {'loss / peer':24s} {'wall med':>9s} {'best':>8s} {'cpu med':>8s} "
    f"{'ratio':>6s} {'mem MB':>8s} {'compile s':>9s} {'speed-up wall / cpu':>19s}"
  )
  print(header)
  print("-" * len(header))
  ours = {(r["case"], r["label"]): r for r in rows if r["label"] == r["metric"]}
  fastest = {}  # (case, metric) -> the fastest peer's row
  for r in rows:
    speedup = ""
    if r["label"] != r["metric"]:
      mine = ours[(r["case"], r["metric"])]
      speedup = f"{r['med'] / mine['med']:7.1f}x {r['cpu'] / mine['cpu']:7.1f}x"
      key = (r["case"], r["metric"])
      if key not in fastest or r["med"] < fastest[key]["med"]:
        fastest[key] = r
    mem = (
      f"{r['mem']:7.1f}{'*' if r['mem_kind'] == 'peer' else ' '}"
      if r["mem"] is not None
      else "      -"
    )
    compiled = f"{r['compile_s']:9.2f}" if r.get("compile_s") is not None else f"{'':9s}"
    print(
      f"{r['case']:20s} {r['label']:24s} {r['med']:9.1f} {r['best']:8.1f} {r['cpu']:8.1f} "
      f"{r['ratio']:6.2f} {mem} {compiled} {speedup:>19s}"
    )
  print(
    "mem: ours = XLA memory_analysis (args + outputs + temps: what the executable allocates); "
    "* = torch peer: CUDA allocator peak on GPU, ru_maxrss growth on CPU (an upper bound)"
  )
  if fastest:
    print()
    print("speed-up over the fastest peer (median wall):")
    for (case, metric), r in fastest.items():
      times = r["med"] / ours[(case, metric)]["med"]
      print(f"  {case:20s} {metric:12s} {times:6.1f}x  ({r['label']})")
  if jax.default_backend() != "cpu":
    return
  flops, bandwidth = machine_rates()
  print()
  print(
    f"machine probe: {flops / 1e9:.1f} GFLOP/s (float32 GEMM peak, in cache), "
    f"{bandwidth / 1e9:.1f} GB/s copy"
  )
  for r in rows:
    b, *spatial, c = r["shape"]
    if r["label"] in ("ssim", "ms_ssim") and c == 1 and b > 1:
      per_pixel = ssim_flops_per_pixel(dims=len(spatial))
      pixels = b * math.prod(spatial) * (4 / 3 if r["label"] == "ms_ssim" else 1)
      bound = per_pixel * pixels / flops * 1e3
      print(
        f"{r['label']} grey {r['case']}: {per_pixel} FLOP/pixel x {pixels:.0f} px = "
        f"{per_pixel * pixels / 1e6:.0f} MFLOP -> bound {bound:.1f} ms; measured best "
        f"{r['best']:.1f} ms wall, {r['cpu']:.1f} ms CPU ({r['cpu'] / bound:.1f}x the bound by CPU)"
      )
  print(f"peers measured before this library (median ms, one core, grey / colour): {PEERS_TODAY}")


if __name__ == "__main__":
  main(sys.argv[1:])
