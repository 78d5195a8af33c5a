"""skknn: scikit-learn classifiers retrieving from an editable memory of embeddings."""

from skknn._audit import AuditReport, audit
from skknn._device import DeviceWarning
from skknn.exceptions import ModelFileError
from skknn.features import TorchFeatureExtractor, available_models, register_model
from skknn.finetune import FineTunedJointClassifier
from skknn.io import load
from skknn.joint import JointKNNClassifier
from skknn.memory.front import VectorStore
from skknn.memory.neighbors import Neighbors
from skknn.memory.protocols import SearchEngine, Store
from skknn.memory.segments import StorageInUse
from skknn.pruning import MemoryPruner
from skknn.transformer import KNNTransformer
from skknn.voter import KNNVoter

__all__ = [
    "AuditReport",
    "DeviceWarning",
    "FineTunedJointClassifier",
    "JointKNNClassifier",
    "KNNTransformer",
    "KNNVoter",
    "MemoryPruner",
    "ModelFileError",
    "Neighbors",
    "SearchEngine",
    "StorageInUse",
    "Store",
    "TorchFeatureExtractor",
    "VectorStore",
    "audit",
    "available_models",
    "load",
    "register_model",
]
__version__ = "0.1.0"
