"""Reusable neural building blocks: feature embeddings and dense stacks."""

from towerrec.layers.embedding import FeatureEmbedding, embedding, init_embedding_
from towerrec.layers.mlp import MLP

__all__ = ["MLP", "FeatureEmbedding", "embedding", "init_embedding_"]
