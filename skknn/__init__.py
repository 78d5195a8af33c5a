"""skknn: scikit-learn classifiers retrieving from an editable memory of embeddings."""

from skknn._device import DeviceWarning
from skknn.io import load
from skknn.voter import KNNVoter

__all__ = ["DeviceWarning", "KNNVoter", "load"]
__version__ = "0.1.0"
