"""PGD: trustfast's batched attack vs torchattacks looped, and the fused step vs torch's eager ops.

End to end (`measure_e2e`), on two workloads (eval mode, random weights, float32, seeded):
  - "digits_cnn": SmallCNN on 1x8x8 inputs, batch 128, 10 steps;
  - "resnet18_32": CIFAR ResNet-18 on 3x32x32, batch 32, 10 steps (CPU: batch 8, 3 steps, so a
    benchmark round takes seconds, not minutes; the rows record the setting used).
Both attack eps = 2/255, 4/255, 8/255 (alpha = eps / 4) with 4 random restarts, i.e. 12 attacked
copies of every example:
  - "trustfast batched": ONE `trustfast.attacks.PGD(..., eps=[...], restarts=4)` call, the 12
    copies tiled into one batch, the best restart per example picked inside;
  - "torchattacks looped": `torchattacks.PGD(model, eps=e, alpha=e/4, steps=S)` called 4 x 3 = 12
    times, plus what its users write by hand to keep each example's best restart: one forward
    per run for the per-example loss and a `torch.where`.
Throughput counts examples x restarts x eps per second.

The step alone (`measure_step`): `pgd_step` (automatic backend: C++ on the CPU, Triton on CUDA)
vs torch's eager sequence exactly as torchattacks 3.5.1 writes it (`adv + alpha * grad.sign()`,
clamp the delta to the eps-ball, clamp to [0, 1]: 7 kernels), on 256x3x32x32 and 64x3x224x224
float32, next to a copy of the bytes the fused step must move (read x_adv, x, grad, write the
result: 16 B per fp32 element), the floor.

`check_step` is the GPU suite's correctness check of a kernel against the torch reference (its
own tolerance, CHECK_TOLERANCE: the step is compared elementwise to torch in the same precision,
not through the 2x rule); `checks` runs it over CHECK_CASES in fp32 / fp16 / bf16 (key
"pgd_checks") and `timings` the step at each STEP_SHAPES and one SUITE_E2E attack (key
"pgd_timings").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as fn

from trustfast._bench.registry import Section, bf16_skip
from trustfast._bench.timing import median_time, tf32_settings
from trustfast.ops._dispatch import select_backend
from trustfast.ops.pgd_step import pgd_step

WORKLOADS = ("digits_cnn", "resnet18_32")
EPS = (2 / 255, 4 / 255, 8 / 255)
ALPHA = tuple(e / 4 for e in EPS)
RESTARTS = 4
TRUSTFAST = "trustfast batched"
PEER = "torchattacks looped"
E2E_VARIANTS = (TRUSTFAST, PEER)

STEP = "trustfast pgd_step"
EAGER = "torch eager (torchattacks' 7 ops)"
FLOOR = "copy of the same bytes (floor)"
STEP_VARIANTS = (STEP, EAGER, FLOOR)
STEP_SHAPES = ((256, 3, 32, 32), (64, 3, 224, 224))
SMALL_STEP_SHAPES = ((4, 3, 32, 32), (2, 3, 64, 64))
STEP_EPS, STEP_ALPHA = 8 / 255, 2 / 255

# (norm, shape, best-iterate tracking) of `checks`: CIFAR batches (rows of 3072 = 3 BLOCKs of
# 1024), then rows of 3465 and 150525 elements (not whole BLOCKs; the L2 one spans 147 blocks per
# sweep). small: interpreter-sized, same oddness.
CHECK_CASES = [("linf", (128, 3, 32, 32), False), ("l2", (128, 3, 32, 32), False),
               ("linf", (7, 3, 33, 35), True), ("l2", (3, 3, 223, 225), True)]
SMALL_CHECK_CASES = [("linf", (5, 3, 7, 9), False), ("l2", (5, 3, 7, 9), False),
                     ("linf", (3, 2, 67, 33), True), ("l2", (2, 3, 50, 50), True)]
CHECK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The end-to-end attack `timings` runs (small: SETTINGS[workload]["small"]).
SUITE_E2E = {"workload": "resnet18_32", "batch": 128, "steps": 10}

# workload -> scale -> (batch, steps). "full" is the benchmark's setting (CUDA); "cpu" keeps a
# ResNet-18 round to seconds on 2 cores; "small" is the GPU suite's CPU dry run.
SETTINGS = {
    "digits_cnn": {"full": (128, 10), "cpu": (128, 10), "small": (8, 2)},
    "resnet18_32": {"full": (32, 10), "cpu": (8, 3), "small": (2, 1)},
}
IMAGE_SHAPES = {"digits_cnn": (1, 8, 8), "resnet18_32": (3, 32, 32)}


def shape_name(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def scale_of(device: torch.device | str, small: bool) -> str:
    return "small" if small else ("cpu" if torch.device(device).type == "cpu" else "full")


# ----------------------------------------------------------------------------- end to end


@dataclasses.dataclass
class Workload:
    name: str
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    steps: int

    @property
    def batch(self) -> int:
        return self.images.shape[0]

    @property
    def examples(self) -> int:
        """Attacked copies per call: examples x restarts x eps."""
        return self.batch * RESTARTS * len(EPS)

    @property
    def setting(self) -> str:
        return (f"batch {self.batch}, {self.steps} steps, {RESTARTS} restarts x {len(EPS)} eps, "
                f"{shape_name(tuple(self.images.shape[1:]))}")


def _model(name: str) -> nn.Module:
    from trustfast.models import SmallCNN, resnet18

    if name == "digits_cnn":
        return SmallCNN(in_channels=1, num_classes=10, image_size=8)
    return resnet18(num_classes=10, in_channels=3)


def build(workload: str, device: torch.device | str = "cpu", *, small: bool = False,
          batch: int | None = None, steps: int | None = None, seed: int = 0) -> Workload:
    """The model (eval mode, random weights), images in [0, 1] and labels of one workload.

    Weights and data are drawn on the CPU from `seed`, then moved: same numbers on every device.
    `batch` / `steps` override the device's setting (SETTINGS).
    """
    if workload not in SETTINGS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    default_batch, default_steps = SETTINGS[workload][scale_of(device, small)]
    batch, steps = batch or default_batch, default_steps if steps is None else steps
    torch.manual_seed(seed)  # nn.Module initializers use the global generator
    model = _model(workload).eval()
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *IMAGE_SHAPES[workload], generator=gen)
    labels = torch.randint(10, (batch,), generator=gen)
    return Workload(workload, model.to(device), images.to(device), labels.to(device), steps)


def torchattacks_missing() -> str | None:
    """None when torchattacks imports, else why not (the peer is then skipped, not failed)."""
    try:
        import torchattacks  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"torchattacks is not importable ({type(exc).__name__}: {exc})"
    return None


def e2e_variants(wl: Workload, backend: str | None = None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable attacking the whole batch at 3 eps x 4 restarts.

    Both return (len(EPS), *images.shape): each example's highest-loss restart per eps. The peer
    is absent when torchattacks is not importable (see `torchattacks_missing`).
    """
    from trustfast.attacks import PGD

    ours = PGD(wl.model, eps=list(EPS), alpha=list(ALPHA), steps=wl.steps, restarts=RESTARTS,
               seed=0, backend=backend)
    out: dict[str, Callable[[], object]] = {TRUSTFAST: lambda: ours(wl.images, wl.labels)}
    if torchattacks_missing() is None:
        import torchattacks

        attacks = [torchattacks.PGD(wl.model, eps=e, alpha=a, steps=wl.steps, random_start=True)
                   for e, a in zip(EPS, ALPHA)]
        out[PEER] = functools.partial(looped_best_restart, wl.model, attacks, wl.images,
                                      wl.labels)
    return out


def looped_best_restart(model: nn.Module, attacks: list, images: torch.Tensor,
                        labels: torch.Tensor, restarts: int = RESTARTS) -> torch.Tensor:
    """What torchattacks users write for restarts: run each attack `restarts` times and keep,
    per example, the run with the highest cross-entropy (one forward per run)."""
    best = []
    for atk in attacks:
        best_adv = best_loss = None
        for _ in range(restarts):
            adv = atk(images, labels)
            with torch.no_grad():
                loss = fn.cross_entropy(model(adv), labels, reduction="none")
            if best_adv is None:
                best_adv, best_loss = adv, loss
            else:
                better = (loss > best_loss).view(-1, *([1] * (adv.dim() - 1)))
                best_adv = torch.where(better, adv, best_adv)
                best_loss = torch.maximum(loss, best_loss)
        best.append(best_adv)
    return torch.stack(best)


def measure_e2e(device: torch.device | str, repeats: int, *, small: bool = False,
                workloads: tuple[str, ...] = WORKLOADS, batch: int | None = None,
                steps: int | None = None, backend: str | None = None,
                warmup: int = 1) -> list[dict]:
    """One row per (workload, variant): median ms, examples x restarts x eps per second, and
    "trustfast speed-up" = this row's ms / trustfast's (the peer's row reads as the speed-up).

    Each sample is one whole attack call (no back-to-back batching on CUDA: calls take 0.1-1 s).
    """
    device = torch.device(device)
    rows = []
    for name in workloads:
        wl = build(name, device, small=small, batch=batch, steps=steps)
        fns = e2e_variants(wl, backend)
        ms = {v: 1e3 * median_time(f, device, repeats, warmup, calls_per_sample=1)
              for v, f in fns.items()}
        base = {"bench": "pgd e2e", "workload": name, "setting": wl.setting, "batch": wl.batch,
                "steps": wl.steps, "restarts": RESTARTS, "eps": list(EPS), "dtype": "float32",
                "examples": wl.examples,
                "step backend": select_backend("pgd_step", device, backend)}
        for variant in E2E_VARIANTS:
            if variant not in ms:
                rows.append({**base, "variant": variant, "skipped": torchattacks_missing()})
                continue
            rows.append({**base, "variant": variant, "ms": ms[variant],
                         "examples/s": wl.examples / ms[variant] * 1e3,
                         "trustfast speed-up": ms[variant] / ms[TRUSTFAST]})
        del fns, wl
    return rows


# ----------------------------------------------------------------------------- the step alone


def step_bytes(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Bytes the fused L-inf step must move: read x_adv, x, grad; write the result."""
    return 4 * math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def step_inputs(shape: tuple[int, ...], device: torch.device | str,
                dtype: torch.dtype = torch.float32, seed: int = 0):
    """(x_adv, x, grad): x in [0, 1], x_adv inside the 8/255 ball, grad ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x_adv = (x + (torch.rand(shape, generator=gen) * 2 - 1) * STEP_EPS).clamp_(0, 1)
    grad = torch.randn(shape, generator=gen)
    return tuple(t.to(device=device, dtype=dtype) for t in (x_adv, x, grad))


def torchattacks_update(adv_images: torch.Tensor, images: torch.Tensor, grad: torch.Tensor,
                        eps: float, alpha: float) -> torch.Tensor:
    """The update of torchattacks 3.5.1's PGD.forward, line for line."""
    adv_images = adv_images.detach() + alpha * grad.sign()
    delta = torch.clamp(adv_images - images, min=-eps, max=eps)
    return torch.clamp(images + delta, min=0, max=1).detach()


def step_variants(shape: tuple[int, ...], device: torch.device | str,
                  backend: str | None = None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable, in the order of STEP_VARIANTS (fp32)."""
    x_adv, x, grad = step_inputs(shape, device)
    half = step_bytes(shape) // 2
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return {
        STEP: lambda: pgd_step(x_adv, x, grad, eps=STEP_EPS, alpha=STEP_ALPHA, backend=backend),
        EAGER: lambda: torchattacks_update(x_adv, x, grad, STEP_EPS, STEP_ALPHA),
        FLOOR: functools.partial(dst.copy_, src),
    }


def step_agreement(shape: tuple[int, ...], device: torch.device | str,
                   backend: str | None = None) -> float:
    """Max |pgd_step - torchattacks' update| on the benchmark's inputs (0 expected in fp32)."""
    fns = step_variants(shape, device, backend)
    return float((fns[STEP]() - fns[EAGER]()).abs().max())


def measure_step(device: torch.device | str, repeats: int, *, small: bool = False,
                 shapes: tuple[tuple[int, ...], ...] | None = None,
                 backend: str | None = None, warmup: int = 3) -> list[dict]:
    """One row per (shape, variant): median ms, GB/s of the bytes the fused step must move,
    % of the copy floor (copy ms / this row's ms) and "trustfast speed-up" (ms / pgd_step's)."""
    device = torch.device(device)
    shapes = shapes or (SMALL_STEP_SHAPES if small else STEP_SHAPES)
    rows = []
    for shape in shapes:
        fns = step_variants(shape, device, backend)
        ms = {v: 1e3 * median_time(f, device, repeats, warmup) for v, f in fns.items()}
        moved = step_bytes(shape)
        base = {"bench": "pgd_step", "shape": shape_name(shape), "numel": math.prod(shape),
                "dtype": "float32", "norm": "linf", "bytes": moved,
                "backend": select_backend("pgd_step", device, backend),
                "max |diff| vs eager": step_agreement(shape, device, backend)}
        for variant in STEP_VARIANTS:
            rows.append({**base, "variant": variant, "ms": ms[variant],
                         "GB/s": moved / ms[variant] / 1e6,
                         "% of copy": 100 * ms[FLOOR] / ms[variant],
                         "trustfast speed-up": ms[variant] / ms[STEP]})
        del fns
    return rows


def measure(device: torch.device | str, repeats: int, small: bool = False,
            backend: str | None = None) -> list[dict]:
    """Both benchmarks with this device's settings: `measure_e2e` rows, then `measure_step`'s."""
    return (measure_e2e(device, repeats, small=small, backend=backend)
            + measure_step(device, repeats, small=small, backend=backend))


# ----------------------------------------------------------------------------- GPU-suite check

# dtype -> {norm: (ulps, rtol)}: a kernel element passes when |kernel - torch| <= ulps * ulp(m)
# + rtol * eps, m = max(|torch result|, |x_clean|, |x_adv|) (the largest magnitude a rounding
# happened at) and eps the sample's budget.
# L-inf: fp32 does torch's ops in torch's order, but a GPU may contract a*b+c into an FMA: 1 ulp.
# fp16/bf16: the kernel computes in fp32 and rounds once; torch rounds after every op and rounds
# eps/alpha to the storage dtype: up to 2 ulps apart.
# L2: the two per-sample norms are reduced in another order (torch's fp32 norm of a 150k-element
# row is off by ~3e-7 relative; fp16/bf16 torch rounds the norms to the storage dtype), which
# scales the whole delta (|delta| <= eps): rtol of eps, 1e-6 for fp32, 4 ulps at 1 for half.
CHECK_TOLERANCE = {
    torch.float32: {"linf": (1, 0.0), "l2": (1, 1e-6)},
    torch.float16: {"linf": (2, 0.0), "l2": (2, 4 * 2.0**-10)},
    torch.bfloat16: {"linf": (2, 0.0), "l2": (2, 4 * 2.0**-7)},
}


def ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 spacing of `dtype` at |t| (not torch.nextafter: not every device / dtype has it)."""
    fi = torch.finfo(dtype)
    a = t.double().abs()
    normal = fi.eps * torch.exp2(torch.floor(torch.log2(a.clamp(min=fi.tiny))))
    return torch.where(a < fi.tiny, fi.tiny * fi.eps, normal)


def check_inputs(shape: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 CPU inputs: x in [0, 1] with 5 % exact 0 and 5 % exact 1 (box clamps), x_adv in
    the ball, grad with 5 % exact zeros (sign 0), per-sample eps in {2, 4, 8}/255, alpha = eps/4,
    and tracking state (about half the samples improve)."""
    gen = torch.Generator().manual_seed(seed)
    n = shape[0]

    def rand(*s):
        return torch.rand(*s, generator=gen, dtype=torch.float64)

    x = rand(shape)
    u = rand(shape)
    x = torch.where(u < 0.05, 0.0, torch.where(u > 0.95, 1.0, x))
    eps = torch.tensor(EPS, dtype=torch.float64)[torch.randint(3, (n,), generator=gen)]
    eps_b = eps.view(-1, *([1] * (len(shape) - 1)))
    x_adv = (x + (rand(shape) * 2 - 1) * eps_b).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad = torch.where(rand(shape) < 0.05, 0.0, grad)
    return {"x_adv": x_adv, "x": x, "grad": grad, "eps": eps, "alpha": eps / 4,
            "loss": rand(n), "best_loss": rand(n), "best_adv": rand(shape)}


def check_step(norm: str, dtype: torch.dtype, shape: tuple[int, ...],
               device: torch.device | str, *, tracking: bool = False, backend: str = "triton",
               seed: int = 0) -> dict:
    """`pgd_step` on `backend` vs the torch reference in `dtype`, on the same inputs.

    Passes when every element is within CHECK_TOLERANCE of the torch result and, with tracking,
    best_adv and best_loss are bit-identical. Also records both results' max error against the
    reference run in float64 on float64 copies of the same low-precision inputs.
    """
    device = torch.device(device)
    raw = check_inputs(shape, seed)
    tdtype = torch.float64 if dtype == torch.float64 else torch.float32

    def run(run_dtype, run_backend):
        t = {k: v.to(dtype).to(device=device, dtype=run_dtype) for k, v in raw.items()}
        per_sample = run_dtype if run_dtype == torch.float64 else tdtype
        kw = dict(eps=raw["eps"].to(device=device, dtype=per_sample),
                  alpha=raw["alpha"].to(device=device, dtype=per_sample), norm=norm,
                  backend=run_backend)
        if tracking:
            kw.update(loss=t["loss"].to(per_sample), best_loss=t["best_loss"].to(per_sample),
                      best_adv=t["best_adv"])
        out = pgd_step(t["x_adv"], t["x"], t["grad"], **kw)
        return out, kw.get("best_adv"), kw.get("best_loss"), t["x"], t["x_adv"]

    got, got_best, got_best_loss, x, x_adv = run(dtype, backend)
    ref, ref_best, ref_best_loss, _, _ = run(dtype, "torch")
    exact = run(torch.float64, "torch")[0]
    ulps, rtol = CHECK_TOLERANCE[dtype][norm]
    mag = torch.maximum(torch.maximum(ref.abs(), x.abs()), x_adv.abs()).double()
    eps = raw["eps"].to(device).view(-1, *([1] * (len(shape) - 1)))
    bound = ulps * ulp(mag, dtype) + rtol * eps
    diff = (got.double() - ref.double()).abs()
    over = ~(diff <= bound)  # NaN counts as over
    worst = int(diff.nan_to_num(nan=math.inf).flatten().argmax())
    row = {
        "case": f"pgd_step {norm} {shape_name(shape)}" + (" tracking" if tracking else ""),
        "norm": norm, "dtype": str(dtype).removeprefix("torch."), "shape": shape_name(shape),
        "numel": math.prod(shape), "backend": backend, "tracking": tracking,
        "tolerance": f"{ulps} ulp" + (f" + {rtol:.1e} x eps" if rtol else ""),
        "max_diff_vs_torch": float(diff.max()), "n_over_bound": int(over.sum()),
        "worst_at": f"flat index {worst}",
        "err_vs_float64": float((got.double() - exact).abs().max()),
        "torch_err_vs_float64": float((ref.double() - exact).abs().max()),
    }
    passed = row["n_over_bound"] == 0
    if tracking:
        row["best_adv_equal"] = bool(torch.equal(got_best, ref_best))
        row["best_loss_equal"] = bool(torch.equal(got_best_loss, ref_best_loss))
        passed = passed and row["best_adv_equal"] and row["best_loss_equal"]
    row["passed"] = passed
    return row


def checks(device: torch.device | str, *, small: bool, backend: str = "triton") -> list[Section]:
    """`check_step` on every (dtype, case) of CHECK_CASES (SMALL_CHECK_CASES when small)."""
    device = torch.device(device)
    sections = []
    for dtype in CHECK_DTYPES:
        name = str(dtype).removeprefix("torch.")
        for norm, shape, tracking in SMALL_CHECK_CASES if small else CHECK_CASES:
            case = f"pgd_step {norm} {shape_name(shape)}" + (" tracking" if tracking else "")
            meta = {"case": case, "norm": norm, "dtype": name, "numel": math.prod(shape),
                    "backend": backend}
            sections.append(Section(
                "pgd_checks", f"check {case} {name}",
                lambda n=norm, d=dtype, s=shape, t=tracking: check_step(
                    n, d, s, device, tracking=t, backend=backend),
                meta, skip=bf16_skip(device, dtype, backend)))
    return sections


def timings(device: torch.device | str, repeats: int, *, small: bool,
            backend: str | None = None, ceilings: dict | None = None) -> list[Section]:
    """The step at each shape (`measure_step`), then one SUITE_E2E attack (`measure_e2e`; each
    sample is a whole attack, ~1 s: at most 3 after one warm-up, 1 when small)."""
    device = torch.device(device)
    sections = [Section("pgd_timings", f"pgd_step timing {shape_name(shape)}",
                        lambda s=shape: measure_step(device, repeats, shapes=(s,),
                                                     backend=backend),
                        {"bench": "pgd_step", "shape": shape_name(shape), "dtype": "float32"})
                for shape in (SMALL_STEP_SHAPES if small else STEP_SHAPES)]
    workload = SUITE_E2E["workload"]
    e2e = {} if small else {"batch": SUITE_E2E["batch"], "steps": SUITE_E2E["steps"]}
    sections.append(Section(
        "pgd_timings", f"pgd e2e timing {workload}",
        lambda: measure_e2e(device, 1 if small else min(repeats, 3), small=small,
                            workloads=(workload,), backend=backend, **e2e),
        {"bench": "pgd e2e", "workload": workload, "dtype": "float32",
         **tf32_settings(device)}))
    return sections
