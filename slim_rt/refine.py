"""Encoder-side refinement for a known machine: per image, choose the coded latent y for the classifier.

The encoder holds the original image, so it can ask the machine what it sees in it and pick, among
latents the decoder will decode, one whose decoded image the machine reads the same way. Starting
from y0 = g_a(latent) (and z0 = h_a(y0)), `steps` Adam steps minimise

    KL(clf(original) || clf(decoded)) + rate_weight * bpp + cap_weight * relu(bpp - cap)

(with several machines, the mean of their KLs) through the straight-through rounding of y (the
symbols the coder writes), the frozen latent synthesis g_s, the frozen autoencoder's decoder and the
resize back to the image's size; bpp is the
rate of y's symbols under the Gaussian conditional plus z's under the factorized prior. By default z
(hence the means and the CDF indexes) stays fixed; `refine_z` searches it too, through the hyper-
synthesis (the means and the fake-quantised scale network: the file's indexes are then computed
exactly from the chosen z, as the decoder computes them). cap is the unrefined file's bpp, or, with
`target_bpp`, the lower of that and the target (whole-file bpp: an estimate of the header's bytes,
with no caption, is counted in; a rate control for the encoder, not a guarantee). Nothing about the
format or the decoder changes: a refined file is an ordinary file of the same model, decoded by any
decoder and backend.

What it costs and what it buys: `steps` forward and backward passes of the decoder and the classifier
per image at encode time (decode time is unchanged), and machine accuracy for the classifier it was
refined for. It is an optimisation *for that machine*: benchmarks/results/slim-tiny-v2-refine.md
reports it with the machine it was refined for and with one it never saw (EfficientNet-Lite2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from slim_rt.classifier import MACHINES, machine_names
from slim_rt.images import from_coded


@dataclass(frozen=True)
class RefineConfig:
    steps: int = 20             # Adam steps per batch (0: off); the iterate of least loss is kept
    lr: float = 0.02            # on y, in quantisation steps (the symbols are round(y - mean))
    rate_weight: float = 30.0   # KL nats per bpp
    cap_weight: float = 3000.0  # per bpp above the cap (the unrefined file's bpp, or target_bpp if lower)
    target_bpp: float | None = None    # whole-file bpp to stay under (None: the unrefined file's)
    machines: tuple[str, ...] = ("efficientnet-lite0",)  # what `Encoder(refine=...)` refines for (mean KL;
                                                          # names of slim_rt.classifier.load_machine)
    refine_z: bool = False      # also search the hyper-latent z (fewer side bits; indexes follow)
    jitter: float = 0.0         # > 0: each step the machines see both images through one random crop (side
                                # 1 - jitter .. 1) and flip: what they read must survive small shifts
    seed: int = 0               # of the jitter (a refined file is a function of the image and the config)
    chunk_pixels: int = 512 * 512      # images refined together (autograd keeps the decoder's activations:
    max_pixels: int = 1024 * 1024      # ~2 KB a pixel in float32); larger images are refused

    def __post_init__(self):
        if not (isinstance(self.steps, int) and 0 <= self.steps <= 1000):
            raise ValueError(f"refine steps must be an integer in [0, 1000], got {self.steps!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"refine jitter must be in [0, 1), got {self.jitter!r}")
        if not (self.lr > 0 and self.rate_weight >= 0 and self.cap_weight >= 0):
            raise ValueError("refine needs lr > 0 and rate_weight, cap_weight >= 0")
        if self.target_bpp is not None and not self.target_bpp > 0:
            raise ValueError(f"refine target_bpp must be > 0, got {self.target_bpp!r}")
        if not (isinstance(self.machines, tuple) and self.machines and set(self.machines) <= set(MACHINES)):
            raise ValueError(f"refine machines must be a non-empty tuple of {', '.join(MACHINES)}, got {self.machines!r}")
        if not (1 <= self.chunk_pixels and 1 <= self.max_pixels):
            raise ValueError("refine needs chunk_pixels, max_pixels >= 1")


# bytes of a file besides the information content of its two streams, with no caption: the header (15
# fixed, 3-4 varint, 4 CRC) and ~5 bytes a stream that the ANS coder adds (its final state, 32-bit words)
OVERHEAD_BYTES = 23 + 2 * 5


def _z_bits(eb, z_hat: Tensor) -> Tensor:
    """-log2 likelihood of z_hat [B,C,h,w] under the factorized prior (CompressAI's density) -> [B]."""
    B, C = z_hat.shape[:2]
    v = z_hat.permute(1, 0, 2, 3).reshape(C, 1, -1)
    lik = eb._likelihood(v)[0]
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    return -torch.log2(lik).reshape(C, B, -1).sum((0, 2))


def as_config(refine) -> RefineConfig | None:
    """None / 0 / a number of steps / a RefineConfig -> a RefineConfig with steps >= 1, or None (off)."""
    if isinstance(refine, RefineConfig):
        return refine if refine.steps else None
    if refine is None or isinstance(refine, int) and not isinstance(refine, bool):
        return RefineConfig(steps=refine) if refine else None
    raise ValueError(f"refine must be None, a number of steps, a RefineConfig or a MachineRefiner, got {refine!r}")


class MachineRefiner:
    """`refiner(model, rate, images, y, z, coded_hw) -> (y, z)` for `Pipeline.encode(refiner=...)`.

    classifier: a module taking preprocessed images (e.g. `slim_rt.classifier.load_efficientnet_lite0()`),
    preprocess: [B,3,H,W] in [0,1] -> its input (default: EfficientNet-Lite0's, `slim_rt.classifier.preprocess`);
    or a sequence of classifiers and one of preprocess functions: refined for all of them (the mean of
    their KLs; `for_machines` builds one from machine names). config.machines is not read here.
    Runs in float32 on the torch modules of the model (any backend's pipeline: the analysis and the coding
    stay the pipeline's; only this search uses autograd)."""

    def __init__(self, classifier, config: RefineConfig = RefineConfig(), preprocess=None):
        from slim_rt.classifier import preprocess as lite0_preprocess
        many = isinstance(classifier, (list, tuple))
        clfs = list(classifier) if many else [classifier]
        pres = list(preprocess) if many and preprocess is not None else [preprocess] * len(clfs)
        if not clfs or len(pres) != len(clfs):
            raise ValueError("MachineRefiner needs at least one classifier and one preprocess function for each")
        self.machines = [(c.eval().requires_grad_(False), p or lite0_preprocess) for c, p in zip(clfs, pres)]
        self.classifier, self.preprocess = self.machines[0]
        self.config = config

    @classmethod
    def for_machines(cls, config: RefineConfig = RefineConfig(), device="cpu") -> "MachineRefiner":
        """A refiner for config.machines (slim_rt.classifier.load_machine names), each with its preprocessing."""
        from slim_rt.classifier import load_machine
        ms = [load_machine(name, device=device) for name in config.machines]
        return cls([m.model for m in ms], config, [m.preprocess for m in ms])

    def __call__(self, model, rate: int, images: Tensor, y: Tensor, z: Tensor,
                 coded_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """images [B,3,H,W] in [0,1], y [B,M,h,w], z: the analysis of the coded images -> refined (y, z)."""
        cfg = self.config
        if cfg.steps == 0:
            return y, z
        if model.base.vae is None:
            raise ValueError("refinement needs the model's torch autoencoder (load it with from_pretrained)")
        px = images.shape[-2] * images.shape[-1]
        if px > cfg.max_pixels:
            raise ValueError(f"refinement takes images of at most {cfg.max_pixels} pixels (RefineConfig.max_pixels), "
                             f"got {images.shape[-1]}x{images.shape[-2]}")
        n = max(1, cfg.chunk_pixels // px)
        out = [self._refine(model, rate, images[i:i + n], y[i:i + n], z[i:i + n], coded_hw)
               for i in range(0, len(images), n)]
        return torch.cat([a for a, _ in out]), torch.cat([b for _, b in out])

    def _refine(self, model, rate: int, images: Tensor, y: Tensor, z: Tensor,
                coded_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        comp = model.compressors[rate]
        dev = next(self.classifier.parameters()).device
        machines = self.machines
        images, y, z = images.float().to(dev), y.float().to(dev), z.float().to(dev)
        H, W = images.shape[-2:]
        hc, wc = coded_hw
        vae_dtype = next(model.base.vae.parameters()).dtype
        med = comp.entropy_bottleneck.medians().to(dev)
        with torch.inference_mode(False), torch.enable_grad():  # a pipeline call runs in inference mode
            images, y, z = images.clone(), y.clone(), z.clone()    # normal tensors, usable by autograd
            with torch.no_grad():
                targets = [F.log_softmax(c(p(images)).float(), -1) for c, p in machines]  # each [B, 1000]
                z_sym, z_hat = comp.entropy_bottleneck.quantize_symbols(z)
                fixed = (comp.h_s_mean(z_hat),                                                 # [B, M, h, w]
                         comp.gaussian.scales_from_index(comp.h_s_scale.indexes(z_sym, comp.int_params()).float()),
                         _z_bits(comp.entropy_bottleneck, z_hat))   # exactly the table's scales; z's bits
            gen = torch.Generator().manual_seed(cfg.seed)

            def view(step: int):
                """The step's view of the images: None (as they are), or with jitter a random crop (and flip)."""
                if not cfg.jitter:
                    return None
                r = torch.rand(5, generator=gen).tolist()
                frac = 1.0 - cfg.jitter * r[0]
                h, w = max(1, round(H * frac)), max(1, round(W * frac))
                t, left = round((H - h) * r[1]), round((W - w) * r[2])
                return lambda x: (x[..., t:t + h, left:left + w].flip(-1) if r[3] < 0.5
                                  else x[..., t:t + h, left:left + w])

            def side(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
                """z -> (means, scales, z bits [B]) as the decoder will derive them (STE rounding)."""
                if not cfg.refine_z:
                    return fixed
                r = z - med
                sym = r + (torch.round(r) - r).detach()
                return (comp.h_s_mean(sym + med), comp.gaussian.scales_from_index(comp.h_s_scale(sym)),
                        _z_bits(comp.entropy_bottleneck, sym + med))

            def coded(y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
                """-> (y_hat as the decoder will see it (STE), bpp of y's and z's symbols per image [B])"""
                means, scales, z_bits = side(z)
                r = y - means
                y_hat = r + (torch.round(r) - r).detach() + means
                bits = -torch.log2(comp.gaussian.likelihood(y_hat, scales, means)).flatten(1).sum(1) + z_bits
                return y_hat, bits / (H * W)

            def objective(y: Tensor, z: Tensor, step: int) -> tuple[Tensor, Tensor]:
                """-> (KL per image [B] (in the step's view), bpp per image [B])"""
                y_hat, bpp = coded(y, z)
                lat = comp.g_s(y_hat).to(vae_dtype)                       # fp16/bf16 autoencoders too
                img = (model.base.decode_latent(lat).float()[..., :hc, :wc] + 1) / 2
                if (hc, wc) != (H, W):
                    img = from_coded(img, (H, W))
                img = img.clamp(0, 1)
                v = view(step)
                ts = targets
                if v is not None:
                    img = v(img)
                    with torch.no_grad():
                        ts = [F.log_softmax(c(p(v(images))).float(), -1) for c, p in machines]
                kl = sum(F.kl_div(F.log_softmax(c(p(img)).float(), -1), t, log_target=True, reduction="none").sum(-1)
                         for (c, p), t in zip(machines, ts)) / len(machines)
                return kl, bpp

            with torch.no_grad():
                cap = coded(y, z)[1]                                       # the unrefined file's bpp
            if cfg.target_bpp is not None:
                cap = cap.clamp(max=cfg.target_bpp - 8 * OVERHEAD_BYTES / (H * W))
            y = y.detach().clone().requires_grad_(True)
            z = z.detach().clone().requires_grad_(cfg.refine_z)
            params = [y, z] if cfg.refine_z else [y]
            opt = torch.optim.Adam(params, lr=cfg.lr)
            best = None   # per image: the iterate of least loss seen (with jitter, each in its step's view)
            for step in range(cfg.steps + 1):
                with torch.set_grad_enabled(step < cfg.steps):
                    kl, bpp = objective(y, z, step)
                    loss = kl + cfg.rate_weight * bpp + cfg.cap_weight * F.relu(bpp - cap)    # [B]
                with torch.no_grad():
                    if best is None:
                        best = [loss.detach().clone(), y.detach().clone(), z.detach().clone()]
                    else:
                        k = loss < best[0]
                        best[0] = torch.where(k, loss.detach(), best[0])
                        best[1][k], best[2][k] = y.detach()[k], z.detach()[k]
                if step < cfg.steps:
                    for p, g in zip(params, torch.autograd.grad(loss.sum(), params)):  # not the frozen networks'
                        p.grad = g
                    opt.step()
        return best[1], best[2]


# -- command-line options (slim-rt compress / demo / eval) -------------------------------------------------
def add_arguments(p, what: str = "each image's code") -> None:
    """--refine N and the RefineConfig knobs, on an argparse parser."""
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help=f"optimise {what} for the machine (EfficientNet-Lite0, or --refine-for) in N steps at encode "
                        "time: slower encodes, the same decoder (default 0: off; e.g. 20)")
    p.add_argument("--refine-lr", type=float, default=None, metavar="LR",
                   help="with --refine: Adam step size on the latent, in quantisation steps (default 0.02)")
    p.add_argument("--refine-rate-weight", type=float, default=None, metavar="W",
                   help="with --refine: KL nats per bpp (default 30); higher = fewer bits")
    p.add_argument("--refine-target-bpp", type=float, default=None, metavar="B",
                   help="with --refine: aim each file at B bits per pixel, whole file (default: its unrefined size)")
    p.add_argument("--refine-z", action="store_true", help="with --refine: also search the hyper-latent (side bits)")
    p.add_argument("--refine-for", metavar="M,M", default=None,
                   help="with --refine: the machines to refine for (mean KL), e.g. lite0,lite1 (default lite0)")
    p.add_argument("--refine-jitter", type=float, default=0.0, metavar="J",
                   help="with --refine: random crops of side 1-J..1 and flips each step (default 0: none)")


def from_args(args) -> RefineConfig | None:
    """The options of add_arguments -> a RefineConfig, or None with --refine 0 (ValueError if a knob is
    given without --refine)."""
    knobs = {"lr": args.refine_lr, "rate_weight": args.refine_rate_weight, "target_bpp": args.refine_target_bpp,
             "refine_z": args.refine_z or None, "jitter": args.refine_jitter or None,
             "machines": args.refine_for and machine_names(args.refine_for)}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if not args.refine:
        if knobs:
            flags = {"lr": "--refine-lr", "rate_weight": "--refine-rate-weight", "target_bpp": "--refine-target-bpp",
                     "refine_z": "--refine-z", "jitter": "--refine-jitter", "machines": "--refine-for"}
            raise ValueError(f"{', '.join(flags[k] for k in knobs)}: only with --refine N")
        return None
    return RefineConfig(steps=args.refine, **knobs)


def suffix(cfg: RefineConfig | None) -> str:
    """Curve and file-name suffix: "-refine20" and what differs from the default RefineConfig: "-lr0.05"
    (lr), "-w300" (rate_weight), "-t0.03" (target_bpp), "-z" (refine_z), "-j0.1" (jitter),
    "-for-lite0+lite1" (machines); "" when off."""
    if not cfg:
        return ""
    d = RefineConfig()
    return (f"-refine{cfg.steps}" + (f"-lr{cfg.lr:g}" if cfg.lr != d.lr else "")
            + (f"-w{cfg.rate_weight:g}" if cfg.rate_weight != d.rate_weight else "")
            + (f"-t{cfg.target_bpp:g}" if cfg.target_bpp is not None else "") + ("-z" if cfg.refine_z else "")
            + (f"-j{cfg.jitter:g}" if cfg.jitter else "")
            + ("-for-" + "+".join(m.replace("efficientnet-", "") for m in cfg.machines)
               if cfg.machines != d.machines else ""))
