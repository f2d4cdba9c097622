"""Networks (plain nn.Modules): the SLIM compressor and the diffusers base."""
from .compressor import SlimCompressor

__all__ = ["SlimCompressor"]
