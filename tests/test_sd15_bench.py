"""benchmarks/gpu/sd15.py in its CPU smoke mode: tiny SD-1.5-shaped UNet + VAE through slim-rt's stages.

Compiling the tiny UNet on CPU takes ~55 s cold (the VAE decoder ~25 s), so the compiled variant here
compiles the VAE decoder only (--compile-stages vae_decoder); the full compiled path runs on the GPU.
"""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sd15():
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("slim_rt_bench_sd15_test", ROOT / "benchmarks" / "gpu" / "sd15.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sd15_smoke(sd15, tmp_path, capsys):
    assert sd15.main(["--smoke", "--device", "cpu", "--runs", "2", "--warmup", "1",
                      "--compile-stages", "vae_decoder", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "sd15-cpu.json").read_text())
    assert res["smoke"] is True and res["note"] == sd15.SMOKE_NOTE and res["met"] is None
    assert res["target_ms"] == 15 and res["device"] == "cpu"
    assert res["params"]["unet"] > 1e6 and 0 < res["params"]["vae_decoder"] < res["params"]["vae"]
    assert res["versions"]["torch"] and res["versions"]["diffusers"]
    assert set(res["variants"]) == {"eager-fp32", "compiled-fp32"}
    for name, v in res["variants"].items():
        assert "error" not in v and "skipped" not in v, (name, v.get("error"), v.get("traceback"))
        assert v["runs"] == 2 and v["finite"]
        for part in ("unet_ms", "vae_decoder_ms", "total_ms", "total_wall_ms"):
            assert 0 < v[part]["median"] <= v[part]["p99"], (name, part, v[part])
        assert v["total_ms"]["median"] >= v["unet_ms"]["median"]
    assert res["variants"]["eager-fp32"]["max_abs_diff"] == 0.0  # eager is deterministic on the same input
    comp = res["variants"]["compiled-fp32"]
    assert comp["compiled_stages"] == ["vae_decoder"] and comp["compile_s"] > 0
    # the compiled graph computes the same function as eager (fp32: up to float rounding)
    scale = max(1.0, comp["reference"]["image_max_abs"])
    assert comp["max_abs_diff"] <= 1e-4 * scale and comp["max_abs_diff_latent"] == 0.0
    out = capsys.readouterr().out
    assert "| eager-fp32 |" in out and "compiled-fp32 (vae_decoder only)" in out


def test_sd15_budget_skips(sd15):
    """A spent budget skips the variants, each with its reason (no modules are built)."""
    res = sd15.run(sd15.parse_args(["--smoke", "--device", "cpu", "--budget-s", "-1"]))
    assert set(res["variants"]) == {"eager-fp32", "compiled-fp32"}
    assert all(v["skipped"].startswith("budget:") for v in res["variants"].values())
    assert res["met"] is None and "params" not in res
    assert "budget:" in sd15.markdown(res)


def test_sd15_configs_are_sd15(sd15):
    """The full configs are SD-1.5's: diffusers' UNet defaults but for cross_attention_dim 768."""
    import inspect

    from diffusers import UNet2DConditionModel
    defaults = {k: p.default for k, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()}
    diff = {k for k, v in sd15.UNET_SD15.items() if defaults[k] != v}
    assert diff == {"sample_size", "cross_attention_dim"}
    assert sd15.UNET_SD15["cross_attention_dim"] == 768 and sd15.VAE_SD15["block_out_channels"] == (128, 256, 512, 512)
    with pytest.raises(SystemExit):
        sd15._variant("compiled-fp8")
