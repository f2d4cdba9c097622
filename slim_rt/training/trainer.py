"""The training loop shared by every stage: Accelerate, checkpoints, resume, progress bar.

A stage provides `models` (what is trained), `loss(batch) -> (loss, logs)` and `save(out_dir)`.
Checkpoints (`out/checkpoint.pt`: models, optimizers, step, config) are written every
`ckpt_every` steps and at the end; running the same command again resumes from them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from slim_rt.training.config import TrainConfig


class TrainStage:
    """What `train` trains: parameter groups, modules to checkpoint, a loss per batch. (Not the
    runtime's `slim_rt.backends.Stage`, a named-tensor network call.)"""
    name = "stage"

    def parameters_groups(self) -> list[tuple[list, float]]:
        raise NotImplementedError

    def modules(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def loss(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self) -> None:
        pass

    def save(self, out: Path) -> None:
        raise NotImplementedError


def _collate(items: list[dict]) -> dict:
    out = {}
    for k in items[0]:
        v = [it[k] for it in items]
        out[k] = torch.stack(v) if isinstance(v[0], torch.Tensor) else (torch.tensor(v) if isinstance(v[0], int) else v)
    return out


def train(stage: TrainStage, dataset, cfg: TrainConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Run (or resume) `cfg.steps` optimisation steps of `stage`; returns the final log line."""
    from accelerate import Accelerator
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size,
                        collate_fn=_collate, generator=gen)
    mods = stage.modules()
    opts = [torch.optim.Adam(params, lr=lr) for params, lr in stage.parameters_groups()]
    prepared = acc.prepare(*mods.values(), *opts, loader)
    n = len(mods)
    for k, m in zip(mods, prepared[:n]):
        setattr(stage, k, m)
    opts, loader = list(prepared[n:n + len(opts)]), prepared[-1]

    ckpt = out / "checkpoint.pt"
    step, t_spent = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("config", {}).get("stage") != cfg.stage or set(state["models"]) != set(mods):
            raise ValueError(f"{ckpt} is a checkpoint of stage {state.get('config', {}).get('stage')!r}, "
                             f"not {cfg.stage!r}: use another --out")
        for k, m in zip(mods, prepared[:n]):
            acc.unwrap_model(m).load_state_dict(state["models"][k])
        for o, s in zip(opts, state["optimizers"]):
            o.load_state_dict(s)
        step, t_spent = state["step"], state.get("seconds", 0.0)
        acc.print(f"resumed {stage.name} from {ckpt} at step {step}")

    def save_ckpt():
        if acc.is_main_process:
            state = {"models": {k: acc.unwrap_model(m).state_dict() for k, m in zip(mods, prepared[:n])},
                     "optimizers": [o.state_dict() for o in opts], "step": step, "seconds": t_spent,
                     "config": dataclasses.asdict(cfg)}
            torch.save(state, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)

    log_path = out / "log.jsonl"
    last: dict = {}
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and acc.is_main_process), desc=stage.name,
               dynamic_ncols=True)
    for m in prepared[:n]:
        m.train()
    while step < cfg.steps:
        for batch in loader:
            if step >= cfg.steps:
                break
            t = time.perf_counter()
            with acc.autocast():
                loss, logs = stage.loss(batch, step)
            for o in opts:
                o.zero_grad(set_to_none=True)
            acc.backward(loss)
            for o in opts:
                o.step()
            stage.after_step()
            step += 1
            t_spent += time.perf_counter() - t
            last = {"step": step, "seconds": round(t_spent, 1), **{k: round(float(v), 5) for k, v in logs.items()}}
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix({k: v for k, v in last.items() if k not in ("step", "seconds")})
                if acc.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(last) + "\n")
            if step % cfg.ckpt_every == 0:
                save_ckpt()
    bar.close()
    save_ckpt()
    for m in prepared[:n]:
        m.eval()
    if acc.is_main_process:
        stage.save(out)
    return last
