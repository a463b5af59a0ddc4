"""dbl_kernels: the Distribution-Balanced loss (Wu et al., ECCV 2020), fused and exact."""
from ._sparse import select_rows as csr_select_rows
from .asymmetric import AsymmetricLoss, AsymmetricLossMultiLabel, asymmetric_loss
from .backends import available_backends, cpu_threads
from .linear import LinearDistributionBalancedLoss, linear_distribution_balanced_loss
from .loss import PRESET_CONFIGS, DistributionBalancedLoss, ResampleLoss, distribution_balanced_loss
from .stats import ClassStats

__version__ = "0.1.0"
__all__ = ["DistributionBalancedLoss", "distribution_balanced_loss", "ResampleLoss", "ClassStats",
           "AsymmetricLoss", "AsymmetricLossMultiLabel", "asymmetric_loss",
           "LinearDistributionBalancedLoss", "linear_distribution_balanced_loss", "csr_select_rows",
           "available_backends", "cpu_threads", "PRESET_CONFIGS", "__version__"]
