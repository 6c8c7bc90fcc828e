"""towerrec.save / towerrec.load: any model, from JSON + safetensors, never a pickle."""

from __future__ import annotations

import json

import pytest
import torch

from config_helpers import small_config
from towerrec.data.synthetic import make_synthetic
from towerrec.errors import TowerrecError
from towerrec.layers.embedding import embedding
from towerrec.model import RetrievalModel
from towerrec.models.baselines import PopularityModel
from towerrec.models.sequential import SequentialModel
from towerrec.saving import load, save
from towerrec.tasks.retrieval import Retrieval
from towerrec.train.prepared import prepare


class PairModel(RetrievalModel):
    def __init__(self, num_users: int, num_items: int, dim: int = 4) -> None:
        super().__init__()
        self.user, self.item = embedding(num_users, dim), embedding(num_items, dim)
        self.task = Retrieval(temperature=0.5)

    def query_embeddings(self, batch):
        return self.user(batch["user"])

    def candidate_embeddings(self, batch):
        return self.item(batch["item"])

    def compute_loss(self, batch):
        return self.task(self.query_embeddings(batch), self.candidate_embeddings(batch), candidate_ids=batch["item"])


def _same_weights(a, b):
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value)


def test_a_custom_model_round_trips(tmp_path):
    model = PairModel(7, 5, dim=3)
    save(model, tmp_path / "m", metadata={"item_ids": [10, 20, 30, 40, 50]})
    again = load(tmp_path / "m")
    assert type(again) is PairModel and not again.training
    _same_weights(model, again)
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["class"].endswith(":PairModel") and manifest["metadata"]["item_ids"][0] == 10
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]


def test_two_tower_sequential_and_baseline_models_round_trip(tmp_path):
    config = small_config({"data": {"dataset": "synthetic"},
                               "model": {"query_features": ["user_id", "user_history"],
                                         "candidate_features": ["item_id"], "embedding_dim": 8,
                                         "layer_sizes": [16, 8], "similarity": "cosine", "history_length": 5}})
    data = prepare(config, make_synthetic(60, 30, 900, seed=2), progress=False)
    from towerrec.train.models import two_tower_for

    two_tower = two_tower_for(config, data.features)
    sequential = SequentialModel(30, embedding_dim=8, encoder="sasrec", max_length=6, num_heads=2,
                                 step_features=("genre",), num_genres=4, genre_width=2, num_users=9,
                                 objective="sampled", num_sampled=7, task=Retrieval(temperature=0.2))
    popularity = PopularityModel(30).fit(torch.randint(30, (100,)).numpy())
    for name, model in (("tt", two_tower), ("seq", sequential), ("pop", popularity)):
        save(model, tmp_path / name)
        again = load(tmp_path / name)
        assert type(again) is type(model)
        _same_weights(model, again)
    loaded = load(tmp_path / "tt")
    assert loaded.similarity == "cosine" and loaded.task.temperature == two_tower.task.temperature
    batch = {k: v[:4] for k, v in data.catalogue.items()}
    torch.testing.assert_close(loaded.candidate_embeddings(batch), two_tower.eval().candidate_embeddings(batch))
    seq = load(tmp_path / "seq")
    assert seq.objective == "sampled" and seq.num_sampled == 7 and seq.task.temperature == 0.2


def test_damaged_edited_or_foreign_folders_are_clear_errors(tmp_path):
    save(PairModel(4, 4), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    with pytest.raises(TowerrecError, match="model.safetensors"):
        load(tmp_path / "m")
    save(PairModel(4, 4), tmp_path / "n")
    manifest = tmp_path / "n" / "model.json"
    manifest.write_text(manifest.read_text().replace(":PairModel", ":NoSuchModel"))
    with pytest.raises(TowerrecError, match="NoSuchModel is not a towerrec.Model subclass"):
        load(tmp_path / "n")
    values = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**values, "class": "os:path"}))
    with pytest.raises(TowerrecError, match="os:path is not a towerrec.Model subclass"):
        load(tmp_path / "n")
    with pytest.raises(TowerrecError, match="not a saved towerrec model"):
        load(tmp_path)


def test_save_never_replaces_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(TowerrecError, match="already exists"):
        save(PairModel(4, 4), tmp_path / "mine")
    with pytest.raises(TowerrecError):
        save(PairModel(4, 4), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    save(PairModel(4, 4), tmp_path / "m")
    with pytest.raises(TowerrecError, match="already exists"):
        save(PairModel(4, 4), tmp_path / "m")
    save(PairModel(5, 4), tmp_path / "m", overwrite=True)
    assert load(tmp_path / "m").user.weight.shape[0] == 5


def test_only_towerrec_models_are_saved():
    with pytest.raises(TypeError, match="towerrec.Model"):
        save(torch.nn.Linear(2, 2), "x")  # type: ignore[arg-type]
