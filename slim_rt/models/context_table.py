"""A text encoder replaced by a table of precomputed caption contexts.

The UNet reads a caption only through the text encoder's token states. Where captions come from a
closed set (a benchmark, a fixed caption template over a label set) or the text encoder cannot be
installed (a GPU box that cannot fetch the 90 MB MiniLM package), those states can be computed once
and shipped as a table:

    table = ContextTable.build(model.base, ["a photo of a cat", ""])   # where the encoder exists
    table.save("contexts/")                                            # states, ids, config, tokenizer
    dec = slim_rt.Decoder.from_pretrained("slim-tiny", text_encoder="contexts/")   # elsewhere

The table keeps the text encoder's config, so the model's fingerprint (which covers it) is unchanged
and bitstreams travel between the two. A caption outside the table is a clear error.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from slim_rt.errors import ModelLoadError, first_line

TABLE_FILE = "context_table.safetensors"
CONFIG_FILE = "text_encoder_config.json"


class TableConfig(SimpleNamespace):
    """The original text encoder's config, as a plain namespace (fingerprints read `to_dict()`)."""

    def to_dict(self) -> dict:
        return dict(vars(self))


class ContextTable(nn.Module):
    """`forward(input_ids, attention_mask)` -> `.last_hidden_state` of the captions in the table.

    ids: [N, T] int64 token ids of the tabled captions; states: [N, T, D] their token states."""

    def __init__(self, config: dict, ids: Tensor, states: Tensor, captions: list[str]):
        super().__init__()
        self.config = TableConfig(**config)
        self.captions = list(captions)
        self.register_buffer("ids", ids.to(torch.int64), persistent=False)
        self.register_buffer("states", states, persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None):
        if input_ids.shape[-1] != self.ids.shape[-1]:
            raise ValueError(f"token length {input_ids.shape[-1]} differs from the table's {self.ids.shape[-1]}")
        hit = (input_ids.to(self.ids.device)[:, None, :] == self.ids[None]).all(-1)  # [B, N]
        missing = (~hit.any(1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"caption not in this precomputed context table (row {missing[0]} of the batch; the "
                             f"table holds {len(self.captions)}: {', '.join(map(repr, self.captions[:5]))}"
                             f"{', ...' if len(self.captions) > 5 else ''}; load the real text encoder for others)")
        return SimpleNamespace(last_hidden_state=self.states[hit.float().argmax(1)])

    @classmethod
    @torch.inference_mode()
    def build(cls, base, captions: list[str]) -> "ContextTable":
        """Token states of `captions` from a base that has its text encoder (BaseModel)."""
        from slim_rt.models.base import tokenize

        if base.text_encoder is None or base.tokenizer is None:
            raise ValueError("this base has no text encoder to build a context table from")
        captions = list(dict.fromkeys(captions))
        tok = tokenize(base.tokenizer, captions)
        dev = next(base.text_encoder.parameters()).device
        states = base.text_states(tok["input_ids"].to(dev), tok["attention_mask"].to(dev)).float().cpu()
        table = cls(base.text_encoder.config.to_dict(), tok["input_ids"], states, captions)
        table.tokenizer = base.tokenizer
        return table

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"ids": self.ids.cpu().contiguous(), "states": self.states.float().cpu().contiguous()},
                  str(out / TABLE_FILE), metadata={"captions": json.dumps(self.captions)})
        (out / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1, default=str) + "\n")
        tok = getattr(self, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(str(out / "tokenizer"))
        return out


def load_context_table(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[ContextTable, object]:
    """(table, tokenizer) from a folder written by `ContextTable.save`."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / TABLE_FILE).is_file() or not (p / CONFIG_FILE).is_file():
        raise ModelLoadError(f"{p} is not a context table (needs {TABLE_FILE} and {CONFIG_FILE})")
    try:
        t = load_file(str(p / TABLE_FILE))
        with safe_open(str(p / TABLE_FILE), "pt") as f:
            captions = json.loads((f.metadata() or {}).get("captions", "[]"))
        config = json.loads((p / CONFIG_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(p / "tokenizer"))
    except Exception as e:
        msg = first_line(e)
        raise ModelLoadError(f"cannot load context table {p}: {msg}") from None
    if t["ids"].ndim != 2 or t["states"].ndim != 3 or t["ids"].shape != t["states"].shape[:2]:
        raise ModelLoadError(f"{p}: context table shapes do not match")
    tokenizer.model_max_length = int(t["ids"].shape[1])
    table = ContextTable(config, t["ids"], t["states"].to(dtype), captions)
    return table.requires_grad_(False).eval(), tokenizer


__all__ = ["ContextTable", "load_context_table"]
