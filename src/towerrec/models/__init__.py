"""Models map feature dicts of tensors to embeddings; they never see strings."""

from towerrec.models.baselines import EASEModel, PopularityModel
from towerrec.models.multitask import MultiTaskModel, build_multitask
from towerrec.models.ranking import DeepRankingModel, build_ranking_model
from towerrec.models.sequential import SequentialModel
from towerrec.models.tower import Tower
from towerrec.models.two_tower import TwoTowerModel, build_two_tower

__all__ = ["DeepRankingModel", "EASEModel", "MultiTaskModel", "PopularityModel", "SequentialModel", "Tower",
           "TwoTowerModel", "build_multitask", "build_ranking_model", "build_two_tower"]
