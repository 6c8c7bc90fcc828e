"""Ranking losses (tasks.Ranking and its functions) against hand-computed values and TF-Ranking's documented ones."""

from __future__ import annotations

import math

import pytest
import torch

import towerrec as tr
from towerrec.tasks import (
    LOSSES,
    Ranking,
    binary_cross_entropy_loss,
    listmle_loss,
    mse_loss,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    softmax_loss,
)

T = torch.tensor


def ln(x: float) -> float:
    return math.log(x)


def test_mse_pointwise_and_keras_weighting() -> None:
    labels, scores = T([1.0, 3.0, 5.0]), T([2.0, 3.0, 3.0])
    assert mse_loss(labels, scores).item() == pytest.approx((1 + 0 + 4) / 3)
    assert mse_loss(labels, scores, reduction="sum").item() == pytest.approx(5.0)
    # Keras SUM_OVER_BATCH_SIZE: divided by the number of rows, not by the weights' sum
    weighted = mse_loss(labels, scores, sample_weight=T([2.0, 1.0, 0.5]))
    assert weighted.item() == pytest.approx((2 * 1 + 0 + 0.5 * 4) / 3)


def test_mse_on_lists_with_a_mask_ignores_padding_even_nan() -> None:
    labels = T([[4.0, 2.0, float("nan")], [1.0, 1.0, 1.0]])
    scores = T([[3.0, 2.0, 7.0], [0.0, 1.0, 3.0]], requires_grad=True)
    mask = T([[True, True, False], [True, True, True]])
    loss = mse_loss(labels, scores, mask=mask, sample_weight=T([1.0, 2.0]))
    assert loss.item() == pytest.approx((1 + 0 + 2 * (1 + 0 + 4)) / 5)
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2] == 0


def test_bce_on_logits() -> None:
    labels, scores = T([1.0, 0.0]), T([0.0, 2.0])
    expected = (ln(2) + ln(1 + math.exp(2))) / 2
    assert binary_cross_entropy_loss(labels, scores).item() == pytest.approx(expected, rel=1e-6)
    # stable for huge logits
    assert binary_cross_entropy_loss(T([1.0]), T([200.0])).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"clicks in \[0, 1\]"):
        binary_cross_entropy_loss(T([3.0]), T([0.0]))


def test_pairwise_hinge_matches_tf_ranking_example_and_hand_values() -> None:
    # tfr.keras.losses.PairwiseHingeLoss docstring: y=[[1, 0]], s=[[0.6, 0.8]] -> 0.6
    assert pairwise_hinge_loss(T([[1.0, 0.0]]), T([[0.6, 0.8]])).item() == pytest.approx(0.6)
    # three grades: pairs (0>1), (0>2), (1>2): max(0, 1-(3-1)) + max(0, 1-(3-2.5)) + max(0, 1-(1-2.5))
    labels, scores = T([[2.0, 1.0, 0.0]]), T([[3.0, 1.0, 2.5]])
    assert pairwise_hinge_loss(labels, scores, reduction="sum").item() == pytest.approx(0 + 0.5 + 2.5)
    assert pairwise_hinge_loss(labels, scores).item() == pytest.approx(3.0 / 3)
    assert pairwise_hinge_loss(labels, scores, margin=0.0, reduction="sum").item() == pytest.approx(1.5)


def test_pairwise_losses_skip_equal_labels_and_padding() -> None:
    # equal labels make no pair: nothing to pay, whatever the scores
    assert pairwise_hinge_loss(T([[1.0, 1.0]]), T([[0.0, 5.0]])).item() == 0.0
    assert pairwise_logistic_loss(T([[3.0, 3.0, 3.0]]), T([[1.0, 2.0, 3.0]])).item() == 0.0
    labels = T([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    scores = T([[0.6, 0.8, 100.0], [0.5, 0.8, 0.4]])
    mask = T([[True, True, False], [True, True, True]])
    # list 1: 1.2; list 2: (1 - 0.3) + (1 - 0.4) = 1.3; mean over the 5 real items
    assert pairwise_hinge_loss(labels, scores, mask=mask).item() == pytest.approx(2.5 / 5)
    weighted = pairwise_hinge_loss(labels, scores, mask=mask, sample_weight=T([2.0, 0.0]), reduction="sum")
    assert weighted.item() == pytest.approx(2.4)


def test_pairwise_logistic_matches_tf_ranking_example() -> None:
    # tfr.keras.losses.PairwiseLogisticLoss docstring: 0.39906943 = log(1 + e^0.2) / 2
    value = pairwise_logistic_loss(T([[1.0, 0.0]]), T([[0.6, 0.8]])).item()
    assert value == pytest.approx(ln(1 + math.exp(0.2)) / 2) and value == pytest.approx(0.39906943)
    # a huge correct gap costs ~0 and stays finite
    assert pairwise_logistic_loss(T([[1.0, 0.0]]), T([[500.0, -500.0]])).item() == pytest.approx(0.0, abs=1e-12)


def test_softmax_matches_tf_ranking_examples() -> None:
    # tfr.keras.losses.SoftmaxLoss: [[1, 0]], [[0.6, 0.8]] -> 0.7981389 = log(1 + e^0.2)
    assert softmax_loss(T([[1.0, 0.0]]), T([[0.6, 0.8]])).item() == pytest.approx(0.7981389, rel=1e-6)
    # the ragged example, as a mask: mean over the 2 lists -> 0.83911896
    labels = T([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scores = T([[0.6, 0.8, float("nan")], [0.5, 0.8, 0.4]])
    mask = T([[True, True, False], [True, True, True]])
    assert softmax_loss(labels, scores, mask=mask).item() == pytest.approx(0.83911896, rel=1e-6)


def test_softmax_graded_labels_and_all_zero_lists() -> None:
    scores = T([[1.0, 0.0, 0.0], [3.0, 1.0, 2.0]])
    labels = T([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z = math.exp(1) + 2
    expected_first = -(2 * (1 - ln(z)) + 1 * (0 - ln(z)))
    # the all-zero list costs 0 but counts in the mean's denominator (TF-Ranking)
    assert softmax_loss(labels, scores).item() == pytest.approx(expected_first / 2, rel=1e-6)
    with pytest.raises(ValueError, match="must be >= 0"):
        softmax_loss(T([[-1.0, 1.0]]), T([[0.0, 0.0]]))


def test_listmle_hand_value_and_tf_ranking_example() -> None:
    # two items: -log P(order) = log(e^0.6 + e^0.8) - 0.6
    assert listmle_loss(T([[1.0, 0.0]]), T([[0.6, 0.8]])).item() == pytest.approx(0.7981389, rel=1e-6)
    # three grades, sorted order 2, 0, 1 by label
    s = [0.3, -1.0, 2.0]
    expected = (ln(math.exp(2.0) + math.exp(0.3) + math.exp(-1.0)) - 2.0) + (ln(math.exp(0.3) + math.exp(-1.0)) - 0.3)
    assert listmle_loss(T([[2.0, 0.0, 5.0]]), T([s])).item() == pytest.approx(expected, rel=1e-6)
    # TF-Ranking's ragged example (1.1613163) is the tie order 0 then 2: our stable tie-break
    labels = T([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scores = T([[0.6, 0.8, 9.0], [0.5, 0.8, 0.4]])
    mask = T([[True, True, False], [True, True, True]])
    assert listmle_loss(labels, scores, mask=mask).item() == pytest.approx(1.1613163, rel=1e-6)


def test_listmle_breaks_ties_by_position() -> None:
    scores = T([[0.0, 1.0]])
    first = ln(1 + math.exp(1.0))  # item 0 drawn first
    assert listmle_loss(T([[1.0, 1.0]]), scores).item() == pytest.approx(first, rel=1e-6)
    assert listmle_loss(T([[1.0, 1.0]]), scores.flip(1)).item() == pytest.approx(ln(1 + math.exp(-1.0)), rel=1e-6)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_has_finite_gradients_and_passes_gradcheck(loss: str) -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    if loss in ("hinge", "listmle", "softmax", "logistic", "mse"):
        labels = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 4.0, 2.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    weight = torch.tensor([1.0, 0.5], dtype=torch.float64)
    task = Ranking(loss)
    scores = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda s: task(labels, s, sample_weight=weight, mask=mask), (scores,))
    task(labels, scores, mask=mask).backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 3] == 0  # padding gets no gradient


def test_gradient_directions_move_the_better_item_up() -> None:
    for loss in ("hinge", "logistic", "softmax", "listmle"):
        scores = torch.zeros(1, 2, requires_grad=True)
        Ranking(loss)(T([[1.0, 0.0]]), scores).backward()
        assert scores.grad[0, 0] < 0 < scores.grad[0, 1], loss  # descent raises item 0, lowers item 1


def test_ranking_task_dispatch_config_and_margin() -> None:
    task = Ranking("hinge", margin=0.5, reduction="sum")
    assert task.get_config() == {"loss": "hinge", "margin": 0.5, "reduction": "sum"}
    assert Ranking(**task.get_config()).get_config() == task.get_config()
    assert task(T([[1.0, 0.0]]), T([[0.0, 0.0]])).item() == pytest.approx(0.5)
    assert task.needs_lists and not Ranking("mse").needs_lists and not Ranking("bce").needs_lists
    assert "margin=0.5" in repr(task)
    assert tr.Ranking is Ranking and tr.tasks.Ranking is Ranking


@pytest.mark.parametrize("loss", ["hinge", "logistic", "softmax", "listmle"])
def test_list_losses_refuse_one_dimensional_input(loss: str) -> None:
    with pytest.raises(ValueError, match=rf"the '{loss}' loss compares candidates within a list"):
        Ranking(loss)(T([1.0, 0.0]), T([0.5, 0.2]))


def test_pointwise_losses_take_both_shapes() -> None:
    for loss in ("mse", "bce"):
        one = Ranking(loss)(T([1.0, 0.0]), T([0.5, 0.2]))
        two = Ranking(loss)(T([[1.0, 0.0]]), T([[0.5, 0.2]]))
        assert one.item() == pytest.approx(two.item())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_labels_or_scores_are_named(bad: float) -> None:
    for loss in LOSSES:
        with pytest.raises(ValueError, match="labels hold NaN or inf"):
            Ranking(loss)(T([[1.0, bad]]), T([[0.0, 0.0]]))
        with pytest.raises(ValueError, match="scores hold NaN or inf"):
            Ranking(loss)(T([[1.0, 0.0]]), T([[0.0, bad]]))


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown ranking loss 'ndcg'; valid: mse, bce"):
        Ranking("ndcg")
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        Ranking("mse", reduction="none")
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        Ranking("hinge", margin=-1.0)
    with pytest.raises(ValueError, match="margin applies to the 'hinge' loss only"):
        Ranking("softmax", margin=0.5)
    with pytest.raises(ValueError, match=r"labels shape \[2\] differs from scores shape \[3\]"):
        mse_loss(T([1.0, 2.0]), T([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \[2\]"):
        mse_loss(T([1.0, 2.0]), T([1.0, 2.0]), sample_weight=T([1.0]))
    with pytest.raises(ValueError, match="sample_weight must hold finite values >= 0"):
        mse_loss(T([1.0, 2.0]), T([1.0, 2.0]), sample_weight=T([1.0, -1.0]))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        softmax_loss(T([[1.0, 2.0]]), T([[1.0, 2.0]]), mask=T([[1, 0]]))
    with pytest.raises(ValueError, match="scores must be"):
        mse_loss(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2))


def test_integer_labels_are_accepted_and_fully_masked_batches_cost_zero() -> None:
    assert mse_loss(T([1, 3]), T([1.0, 1.0])).item() == pytest.approx(2.0)
    mask = torch.zeros(1, 2, dtype=torch.bool)
    for function in (mse_loss, pairwise_hinge_loss, softmax_loss, listmle_loss):
        assert function(T([[1.0, 0.0]]), T([[0.3, 0.1]]), mask=mask).item() == 0.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_losses_run_on_the_inputs_device_and_agree_with_float64_cpu(device: str) -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (6, 7)).double()
    scores = torch.randn(6, 7, dtype=torch.float64)
    mask = torch.rand(6, 7) < 0.8
    weight = torch.rand(6, dtype=torch.float64)
    for loss in LOSSES:
        y = (labels > 2).double() if loss == "bce" else labels
        reference = Ranking(loss)(y, scores, sample_weight=weight, mask=mask)
        on_device = scores.float().to(device).requires_grad_()
        value = Ranking(loss)(y.float().to(device), on_device, sample_weight=weight.float().to(device),
                              mask=mask.to(device))
        value.backward()
        assert value.device.type == device and on_device.grad.device.type == device
        assert value.item() == pytest.approx(reference.item(), rel=1e-5), loss
