"""jscale: measure how language-model loss scales with parameters, data and compute, in JAX and Flax."""

from jscale import results
from jscale.accounting import Accounting, account
from jscale.config import Config, ConfigError, DataConfig, JscaleError, ModelConfig, TrainConfig
from jscale.resolve import load

__version__ = "0.1.0"
__all__ = ["results", "Accounting", "account", "Config", "ConfigError", "DataConfig", "JscaleError", "ModelConfig",
           "TrainConfig", "load"]
