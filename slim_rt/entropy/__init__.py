"""Entropy models: they own quantization, CDF tables and the rANS coding (CompressAI protocol)."""
from .models import ExactGaussianConditional, FactorizedEntropy

__all__ = ["ExactGaussianConditional", "FactorizedEntropy"]
