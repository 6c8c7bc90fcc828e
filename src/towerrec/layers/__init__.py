"""Reusable neural building blocks: feature embeddings, dense stacks, feature crosses and sequence encoders."""

from towerrec.layers.cross import Cross, CrossNetwork
from towerrec.layers.embedding import FeatureEmbedding, embedding, init_embedding_
from towerrec.layers.masked_gru import masked_gru
from towerrec.layers.mlp import MLP
from towerrec.layers.encoder import GRUEncoder, SelfAttentionEncoder
from towerrec.layers.interaction import DotInteraction

__all__ = ["MLP", "Cross", "CrossNetwork", "DotInteraction", "FeatureEmbedding", "GRUEncoder",
           "SelfAttentionEncoder", "embedding", "init_embedding_", "masked_gru"]
