"""Reusable neural building blocks: feature embeddings, dense stacks and sequence encoders."""

from towerrec.layers.embedding import FeatureEmbedding, embedding, init_embedding_
from towerrec.layers.masked_gru import masked_gru
from towerrec.layers.mlp import MLP
from towerrec.layers.encoder import GRUEncoder, SelfAttentionEncoder

__all__ = ["MLP", "FeatureEmbedding", "GRUEncoder", "SelfAttentionEncoder", "embedding", "init_embedding_",
           "masked_gru"]
