"""Reusable neural building blocks: feature embeddings and dense stacks."""

from towerrec.layers.embedding import FeatureEmbedding, init_embedding_
from towerrec.layers.mlp import MLP

__all__ = ["MLP", "FeatureEmbedding", "init_embedding_"]
