"""Models map feature dicts of tensors to embeddings; they never see strings."""

from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.models.multitask import MultiTaskModel, build_multitask
from towerrec.models.sequential import SequentialModel
from towerrec.models.tower import Tower
from towerrec.models.two_tower import TwoTowerModel, build_two_tower

__all__ = ["EASEModel", "MultiTaskModel", "PopularityModel", "SequentialModel", "Tower", "TwoTowerModel",
           "build_multitask", "build_two_tower"]
