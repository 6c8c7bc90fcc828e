"""Writes tfrs_cross_dot.json: TFRS's own Cross and DotInteraction outputs, for tests/test_cross_layers.py.

Run with TFRS's environment (TFRS 0.7.7, TF 2.21):
``TF_USE_LEGACY_KERAS=1 /tmp/tfrs/bin/python tests/data/make_tfrs_cross_dot.py``.
Keras kernels are ``[in, out]`` (PyTorch's Linear weight is their transpose).
"""

import json
from pathlib import Path

import numpy as np
from tensorflow_recommenders.layers.feature_interaction import dcn, dot_interaction

rng = np.random.default_rng(0)
out = {}
x0 = rng.normal(size=(5, 6)).astype(np.float32)
x = rng.normal(size=(5, 6)).astype(np.float32)
for name, kw in [("full", {}), ("low", {"projection_dim": 2, "diag_scale": 0.7}),
                 ("nobias", {"use_bias": False, "diag_scale": 0.2})]:
    layer = dcn.Cross(**kw)
    y = layer(x0, x).numpy()
    out[name] = {"kw": kw, "weights": [w.numpy().tolist() for w in layer.weights],
                 "names": [w.name for w in layer.weights], "y": y.tolist()}
feats = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(4)]
for self_interaction in (False, True):
    out[f"dot_{self_interaction}"] = dot_interaction.DotInteraction(self_interaction=self_interaction)(feats).numpy().tolist()
out["x0"], out["x"], out["feats"] = x0.tolist(), x.tolist(), [f.tolist() for f in feats]
Path(__file__).with_name("tfrs_cross_dot.json").write_text(json.dumps(out, separators=(",", ":")))
