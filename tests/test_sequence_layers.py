"""Sequence encoders: padding never changes a result; no position sees the future."""

import pytest
import torch

from towerrec.layers.encoder import GRUEncoder, SelfAttentionEncoder
from towerrec.models.sequential import SequentialModel


def _encoders():
    torch.manual_seed(0)
    return {
        "gru": GRUEncoder(8, 6),
        "sasrec": SelfAttentionEncoder(8, max_length=12, num_blocks=2, num_heads=2, dropout=0.3),
    }


def _pad(steps: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad [n, d] steps to [1, width, d] with GARBAGE in the pad slots (the mask must hide it)."""
    n, d = steps.shape
    padded = torch.randn(1, width, d) * 100
    padded[0, width - n :] = steps
    mask = torch.zeros(1, width, dtype=torch.bool)
    mask[0, width - n :] = True
    return padded, mask


@pytest.mark.parametrize("kind", ["gru", "sasrec"])
def test_padding_never_changes_a_result(kind):
    encoder = _encoders()[kind].eval()
    steps = torch.randn(4, 8)
    with torch.no_grad():
        outs = [encoder(*_pad(steps, w), last_only=False)[0, -4:] for w in (4, 7, 12)]
        lasts = [encoder(*_pad(steps, w), last_only=True)[0] for w in (4, 7, 12)]
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-5)
    for other in lasts[1:]:
        torch.testing.assert_close(other, lasts[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lasts[0], outs[0][-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "sasrec"])
def test_rows_of_a_batch_are_independent_of_each_other(kind):
    encoder = _encoders()[kind].eval()
    a, b = torch.randn(2, 8), torch.randn(6, 8)
    pa, ma = _pad(a, 6)
    pb, mb = _pad(b, 6)
    # b fills its row (no padding), a does not: the GRU runs them on different paths.
    for last_only in (True, False):
        with torch.no_grad():
            both = encoder(torch.cat([pa, pb, pa]), torch.cat([ma, mb, ma]), last_only=last_only)
            alone = torch.cat([encoder(x, m, last_only=last_only) for x, m in ((pa, ma), (pb, mb), (pa, ma))])
        torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gru", "sasrec"])
def test_causality_no_position_sees_the_future(kind):
    encoder = _encoders()[kind].eval()
    steps, mask = _pad(torch.randn(7, 8), 9)
    changed = steps.clone()
    changed[0, 6:] = torch.randn(3, 8)  # positions 6.. change
    with torch.no_grad():
        before = encoder(steps, mask, last_only=False)
        after = encoder(changed, mask, last_only=False)
    torch.testing.assert_close(after[0, :6], before[0, :6])
    assert not torch.allclose(after[0, 6:], before[0, 6:])


@pytest.mark.parametrize("kind", ["gru", "sasrec"])
def test_padding_gets_zero_output_and_empty_rows_do_not_crash(kind):
    encoder = _encoders()[kind].eval()
    steps, mask = _pad(torch.randn(3, 8), 5)
    empty_steps, empty_mask = torch.zeros(1, 5, 8), torch.zeros(1, 5, dtype=torch.bool)
    with torch.no_grad():
        out = encoder(torch.cat([steps, empty_steps]), torch.cat([mask, empty_mask]), last_only=False)
        last = encoder(torch.cat([steps, empty_steps]), torch.cat([mask, empty_mask]), last_only=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert (out[0, :2] == 0).all() and (out[1] == 0).all() and (last[1] == 0).all()


@pytest.mark.parametrize("encoder", ["gru", "sasrec"])
def test_model_with_step_features_is_padding_invariant_and_causal(encoder):
    torch.manual_seed(1)
    model = SequentialModel(20, embedding_dim=8, encoder=encoder, max_length=10, num_heads=2,
                            step_features=("rating", "genre", "year"), num_genres=4, num_year_buckets=3,
                            genre_width=2).eval()
    model.set_item_features(torch.randint(0, 5, (21, 2)), torch.randint(0, 4, (21,)))
    items = torch.tensor([[0, 0, 0, 5, 3, 9], [0, 0, 0, 0, 0, 0]])
    items[1, 3:] = torch.tensor([5, 3, 9])
    wide = torch.zeros(1, 10, dtype=torch.int64)
    wide[0, -3:] = torch.tensor([5, 3, 9])
    ratings = torch.where(items > 0, 4, 0)
    with torch.no_grad():
        q = model.encode(items, ratings)
        q_wide = model.encode(wide, torch.where(wide > 0, 4, 0))
        steps = model.encode(items, ratings, last_only=False)
        future = items.clone()
        future[0, 5] = 11
        steps_future = model.encode(future, ratings, last_only=False)
    torch.testing.assert_close(q[0], q_wide[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps_future[0, :5], steps[0, :5])
    assert model.candidate_weight().shape == (20, 8)
