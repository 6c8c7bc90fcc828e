"""Features: declarative specs fitted once on train, then frames -> integer/float tensors."""

from towerrec.features.fitted import FeatureSet, FittedFeature, FittedFeatures
from towerrec.features.numeric import Bucketizer, Normalizer
from towerrec.features.spec import (
    BUILTIN_NAMES,
    KINDS,
    FeatureSpec,
    InputSpec,
    builtin_feature,
    resolve_features,
)
from towerrec.features.text import tokenize
from towerrec.features.vocab import Vocabulary

__all__ = [
    "BUILTIN_NAMES",
    "KINDS",
    "Bucketizer",
    "FeatureSet",
    "FeatureSpec",
    "FittedFeature",
    "FittedFeatures",
    "InputSpec",
    "Normalizer",
    "Vocabulary",
    "builtin_feature",
    "resolve_features",
    "tokenize",
]
