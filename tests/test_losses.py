"""RnCLoss against the Rank-N-Contrast reference loop, a brute-force definition, hand-computed
values, and in float32/bfloat16 for far-apart features."""

from __future__ import annotations

import math

import pytest
import torch

from brainage.train.losses import RnCLoss, rnc_loss_reference


def brute_force_rnc(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """The loss as written in the paper, one (i, j) pair at a time, with a log-sum-exp over the
    explicit set {k != i : |y_i - y_k| >= |y_i - y_j|} (stable, unlike the reference code)."""
    n = features.shape[0]
    y = labels.reshape(n)
    terms = []
    for i in range(n):
        s = -(features - features[i]).pow(2).sum(-1).clamp_min(0).sqrt() / t
        for j in range(n):
            if j == i:
                continue
            dij = (y[i] - y[j]).abs()
            in_denominator = [k for k in range(n) if k != i and (y[i] - y[k]).abs() >= dij]
            terms.append(torch.logsumexp(s[in_denominator], 0) - s[j])
    return torch.stack(terms).mean()


def _data(n: int, d: int, seed: int, dtype=torch.float64, label_values: int = 5):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=g, dtype=dtype)
    # few distinct ages -> many ties in label distance, as with integer ages
    labels = torch.randint(20, 20 + label_values, (n,), generator=g).to(dtype)
    return features, labels


@pytest.mark.parametrize("n,label_values", [(3, 2), (8, 3), (16, 5), (31, 4), (48, 90)])
def test_matches_reference_loop_values_and_gradients(n, label_values):
    features, labels = _data(n, 12, seed=n, label_values=label_values)
    loss_fn = RnCLoss(temperature=2.0)

    f1 = features.clone().requires_grad_(True)
    ours = loss_fn(f1, labels)
    ours.backward()
    f2 = features.clone().requires_grad_(True)
    ref = rnc_loss_reference(f2, labels, temperature=2.0)
    ref.backward()

    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-5, atol=1e-12)


def test_labels_as_column_and_other_temperature():
    features, labels = _data(10, 4, seed=1)
    expected = rnc_loss_reference(features, labels, temperature=0.5)
    got = RnCLoss(temperature=0.5)(features, labels[:, None])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_hand_computed_values():
    # Two views: the only positive is also the whole denominator -> loss 0.
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert RnCLoss()(f, torch.tensor([30.0, 70.0], dtype=torch.float64)).item() == 0.0

    # Three views on a line at 0, 1, 3 with ages 0, 1, 2, t = 1; s_ij = -|x_i - x_j|.
    f = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    lse = lambda *v: math.log(sum(math.exp(x) for x in v))  # noqa: E731
    terms = [
        # anchor 0: j=1 (d=1): k in {1, 2}; j=2 (d=2): k in {2}
        lse(-1, -3) - (-1), 0.0,
        # anchor 1: d_10 = d_12 = 1, a tie: both in both denominators
        lse(-1, -2) - (-1), lse(-1, -2) - (-2),
        # anchor 2: j=1 (d=1): k in {0, 1}; j=0 (d=2): k in {0}
        lse(-3, -2) - (-2), 0.0,
    ]
    got = RnCLoss(temperature=1.0)(f, y)
    assert got.item() == pytest.approx(sum(terms) / 6, rel=1e-12)


def test_brute_force_definition_with_ties():
    features, labels = _data(12, 3, seed=7, label_values=3)
    torch.testing.assert_close(RnCLoss(2.0)(features, labels), brute_force_rnc(features, labels, 2.0), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_far_apart_features_are_finite_and_accurate(dtype, rtol):
    g = torch.Generator().manual_seed(3)
    features = (torch.randn(16, 8, generator=g) * 1e4).to(dtype)  # pairs ~1e4 apart
    features[1] = features[0]  # a duplicated view: distance exactly 0 off the diagonal
    labels = torch.randint(20, 80, (16,), generator=g).float()
    labels[3] = labels[4]

    f = features.clone().requires_grad_(True)
    loss = RnCLoss(2.0)(f, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(f.grad).all() and f.grad.dtype == dtype

    # the exact value of the same (rounded) features, in float64
    exact = brute_force_rnc(features.double(), labels.double(), 2.0)
    assert math.isfinite(exact.item())
    assert loss.item() == pytest.approx(exact.item(), rel=rtol)
    # the reference code underflows here: its value is not finite
    assert not torch.isfinite(rnc_loss_reference(features.double(), labels.double(), 2.0))


def test_float32_gradient_close_to_float64():
    features, labels = _data(24, 16, seed=11)
    f32 = features.float().requires_grad_(True)
    RnCLoss()(f32, labels.float()).backward()
    f64 = features.clone().requires_grad_(True)
    RnCLoss()(f64, labels).backward()
    torch.testing.assert_close(f32.grad.double(), f64.grad, rtol=1e-4, atol=1e-7)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RnCLoss(label_diff="l2")
    with pytest.raises(ValueError):
        RnCLoss(feature_sim="cosine")
    with pytest.raises(ValueError):
        RnCLoss(temperature=0)
    with pytest.raises(ValueError):
        RnCLoss()(torch.zeros(4, 2), torch.zeros(3))


# --- the soft-label loss (loss: kl; SFCN, Peng et al. 2021) ---


def _bins(start: float = 10.0, stop: float = 90.0, width: float = 1.0) -> torch.Tensor:
    return torch.arange(start, stop + width / 2, width, dtype=torch.float64)  # edges


def test_soft_labels_sum_to_one_and_peak_at_the_age_bin():
    from brainage.train.losses import soft_age_labels

    edges = _bins()
    ages = torch.tensor([20.3, 45.2, 45.99, 71.5, 10.2])
    labels = soft_age_labels(ages, edges, sigma=1.0)
    assert labels.shape == (5, 80) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(5), rtol=0, atol=1e-6)
    assert (labels >= 0).all()
    bin_of_age = torch.searchsorted(edges, ages.double(), right=True) - 1
    assert labels.argmax(dim=1).tolist() == bin_of_age.tolist()
    # sigma 1 y: about 38 % of the mass in the bin of an age at its centre (2 * Phi(0.5) - 1)
    assert labels[3, 61].item() == pytest.approx(0.3829, abs=1e-4)
    # inactive bins get nothing, the rest is renormalised
    active = edges[:-1] >= 40
    masked = soft_age_labels(ages[1:3], edges, 1.0, active)
    assert (masked[:, ~active] == 0).all()
    torch.testing.assert_close(masked.sum(dim=1), torch.ones(2), rtol=0, atol=1e-6)


def test_soft_label_kl_is_zero_at_the_label_and_positive_elsewhere():
    from brainage.train.losses import SoftLabelKLLoss, soft_age_labels, soft_label_kl

    edges = _bins()
    ages = torch.tensor([22.0, 50.4, 77.7])
    target = soft_age_labels(ages, edges, 1.0)
    assert (target == 0).any()  # far bins underflow: their -inf logits must not give NaN
    assert soft_label_kl(target.log(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert SoftLabelKLLoss(edges)(target.log(), ages).item() == pytest.approx(0.0, abs=1e-6)
    # the same distribution shifted by any constant logit is still the label
    assert soft_label_kl(target.log() + 3.0, target).item() == pytest.approx(0.0, abs=1e-6)
    other = soft_age_labels(ages + 3.0, edges, 1.0)
    wrong = soft_label_kl(other.clamp_min(1e-30).log(), target)
    assert wrong.item() > 1.0
    # gradient descent on the logits moves them toward the label, finitely
    logits = torch.zeros(3, 80, requires_grad=True)
    loss = SoftLabelKLLoss(edges, sigma=1.0)(logits, ages)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad.argmin(dim=1) == target.argmax(dim=1)).all()


def test_expected_age_of_a_soft_label_is_the_age():
    from brainage.models.networks import AgeBinsHead
    from brainage.train.losses import soft_age_labels

    head = AgeBinsHead(4, width=1.0)  # bins over 0-120 y
    head.set_age_range(18.0, 88.0)
    ages = torch.linspace(20.0, 86.0, 133)  # at least 2 y inside the predicted bins
    labels = soft_age_labels(ages, head.edges, 1.0, head.active)
    expected = head.expected_age(labels.log())
    assert float((expected - ages).abs().max()) < 0.05
    # wider bins
    head = AgeBinsHead(4, width=2.0)
    head.set_age_range(18.0, 88.0)
    labels = soft_age_labels(ages, head.edges, 1.0, head.active)
    assert float((head.expected_age(labels.log()) - ages).abs().max()) < 0.05


def test_bins_head_predicts_within_two_years_of_the_training_ages():
    from brainage.models.networks import AgeBinsHead

    head = AgeBinsHead(8)
    head.set_age_range(20.6, 85.2)
    centres = head.centres[head.active]
    assert centres.min().item() == 18.5 and centres.max().item() == 87.5  # floor(20.6) - 2 .. ceil(85.2) + 2
    logits = head(torch.randn(3, 8))
    assert logits.shape == (3, 120) and torch.isinf(logits[:, ~head.active]).all()
    ages = head.expected_age(logits)
    assert ((ages > 18) & (ages < 88)).all()
    with pytest.raises(ValueError, match="outside its bins"):
        head.set_age_range(-3.0, 50.0)
