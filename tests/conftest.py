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


def rand_image(h, w):
    return torch.rand(3, h, w)
