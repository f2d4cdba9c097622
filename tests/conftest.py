import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from slim_rt.testing import build_tiny_random
    return build_tiny_random(tmp_path_factory.mktemp("tiny") / "model", seed=0, rates=2)


@pytest.fixture(scope="session")
def foreign_dir(tmp_path_factory):
    from slim_rt.testing import build_tiny_random
    return build_tiny_random(tmp_path_factory.mktemp("foreign") / "model", seed=7, rates=2)


@pytest.fixture(scope="session")
def codec(tiny_dir):
    import slim_rt
    from slim_rt.captions import FixedCaptioner
    enc = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner("a photo of a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    return enc, dec


@pytest.fixture(scope="session")
def exported(tiny_dir, tmp_path_factory):
    """The tiny random model exported to ONNX once per session (opt 128x128, min 64x64, fp32)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from slim_rt.export import export_model
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    manifest = export_model(str(tiny_dir), out, precision="fp32", size=(128, 128), min_size=(64, 64),
                            progress=lambda s: None)
    return out, manifest


@pytest.fixture(scope="session")
def ort_decoder(exported):
    import slim_rt
    return slim_rt.Decoder.from_engines(exported[0], "ort")


def rand_image(h, w):
    return torch.rand(3, h, w)


def pytest_runtest_logreport(report):
    """SLIM_TEST_FAILURES=file: append each failure's report as soon as it happens (the GPU job's
    tests run under a hard time limit; pytest's own summary comes only at the end, and a killed run
    would lose it)."""
    path = os.environ.get("SLIM_TEST_FAILURES")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
