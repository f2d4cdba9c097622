"""slim-rt: deployment runtime for SLIM (semantic low-bitrate image compression for machines)."""
from slim_rt.api import Decoder, Encoder, inspect
from slim_rt.errors import BitstreamError, ModelLoadError, ModelMismatchError, ResourceLimitError, SlimError

__version__ = "0.1.0"
__all__ = ["Encoder", "Decoder", "inspect", "BitstreamError", "ModelMismatchError", "ModelLoadError",
           "ResourceLimitError", "SlimError"]
