"""Serving: export a trained run or a Python-built retrieval model to a self-contained bundle, and answer
top-K requests in Python (``load_bundle(folder).recommend(user_id, k)``) or over HTTP.

``export_bundle`` and ``load_bundle`` need only torch/safetensors/polars; the
HTTP app (:mod:`towerrec.serve.app`) needs FastAPI and is imported on demand.
"""

from towerrec.serve.bundle import Bundle, load_bundle
from towerrec.serve.export import export_bundle

__all__ = ["Bundle", "export_bundle", "load_bundle"]
