"""Tests of lambda_dpo.losses: hand-computed values, special cases, invariances, gradients vs naive loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_dpo.losses import (
    LOSSES,
    OBJECTIVES,
    TIE_TOLERANCE,
    ListwiseInputs,
    best_worst_dpo_loss,
    dpo_loss,
    listwise_loss,
    pairwise_loss,
    per_dimension_metrics,
    plackett_luce_loss,
    target_nll_loss,
)
from lambda_dpo.targets import mix_targets, target_probs_from_scores

HYPOTHESIS = settings(max_examples=40, deadline=None)
# Every variant the trainer can dispatch to, all called with the listwise keyword signature.
VARIANTS = {
    "listwise": listwise_loss,
    "dpo": best_worst_dpo_loss,
    "pairwise_gap": pairwise_loss,
    "pairwise_uniform": lambda **kw: pairwise_loss(**kw, weighting="uniform"),
    "plackett_luce": plackett_luce_loss,
}


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # −log σ(z) = softplus(−z)


# --------------------------------------------------------------------------------------------- hand-computed values


def test_listwise_hand_computed():
    # r = 0.5 · ([-1, -2, -3] − (-1.5)) = [0.25, -0.25, -0.75]; q = 0.5·[.6, .4, 0] + 0.5·[.2, .2, .6] = [.4, .3, .3]
    # L = −Σ q_i (r_i − lse(r)) = lse(r) − (0.1 − 0.075 − 0.225) = 0.9302696706 + 0.2
    loss = listwise_loss(
        policy_logps=t([-1.0, -2.0, -3.0]),
        reference_logps=t([-1.5, -1.5, -1.5]),
        target_probs=t([[0.6, 0.4, 0.0], [0.2, 0.2, 0.6]]),
        lambdas=t([0.5, 0.5]),
        beta=0.5,
    )
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(1.1302696706417346, abs=1e-9)


def test_listwise_unscored_response_stays_in_softmax_but_padding_does_not():
    # r = [0.25, -0.25, -0.75]; target one-hot on response 0.
    kwargs = dict(
        policy_logps=t([-1.0, -2.0, -3.0]),
        reference_logps=t([-1.5, -1.5, -1.5]),
        target_probs=t([[1.0, 0.0, 0.0]]),
        lambdas=t([1.0]),
        beta=0.5,
    )
    # Response 2 real but unscored: L = lse(0.25, -0.25, -0.75) − 0.25.
    assert listwise_loss(**kwargs).item() == pytest.approx(0.6802696706417346, abs=1e-9)
    # Response 2 a padding slot: L = lse(0.25, -0.25) − 0.25 = softplus(−0.5).
    padded = listwise_loss(**kwargs, response_mask=torch.tensor([[True, True, False]]))
    assert padded.item() == pytest.approx(0.4740769841801067, abs=1e-9)


def test_dpo_hand_computed():
    # β((−1 − −1.5) − (−2 − −1.5)) = 0.1 · 1.0 → −log σ(0.1) = log(1 + e^−0.1)
    loss = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert loss.item() == pytest.approx(0.6443966600735709, abs=1e-9)


def test_dpo_is_stable_for_huge_margins():
    loss = dpo_loss(t(0.0, 1000.0), t(1000.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(1000.0) and loss[1].item() == pytest.approx(0.0, abs=1e-12)


def test_best_worst_dpo_picks_best_and_worst_under_the_mix():
    # q = 0.5·[.7, .2, .1] + 0.5·[0, .3, .7] = [.35, .25, .40]: best = 2, worst = 1 (each dimension alone would
    # pick another pair). r = [0, -1, 1]: −log σ(1 − (−1)) = softplus(−2).
    kwargs = dict(
        policy_logps=t([0.0, -1.0, 1.0]),
        reference_logps=t([0.0, 0.0, 0.0]),
        target_probs=t([[0.7, 0.2, 0.1], [0.0, 0.3, 0.7]]),
        lambdas=t([0.5, 0.5]),
        beta=1.0,
    )
    loss = best_worst_dpo_loss(**kwargs)
    assert loss.item() == pytest.approx(0.1269280110429725, abs=1e-9)
    expected = dpo_loss(t(1.0), t(-1.0), t(0.0), t(0.0), beta=1.0)
    torch.testing.assert_close(loss, expected)


def test_best_worst_dpo_ties_average_the_tied_pairs():
    # q = [.45, .45, .1]: best ∈ {0, 1}, worst = 2; r = [1, 0, −1] → mean(softplus(−2), softplus(−1)).
    loss = best_worst_dpo_loss(
        policy_logps=t([1.0, 0.0, -1.0]),
        reference_logps=t([0.0, 0.0, 0.0]),
        target_probs=t([[0.45, 0.45, 0.1]]),
        lambdas=t([1.0]),
        beta=1.0,
    )
    assert loss.item() == pytest.approx((softplus(-2) + softplus(-1)) / 2, abs=1e-9)


PAIR_EXAMPLE = dict(  # m = 1, q = [.5, .3, .2], r = [1, 0, −1]; pair losses: (0,1), (1,2) softplus(−1); (0,2) softplus(−2)
    policy_logps=t([1.0, 0.0, -1.0]),
    reference_logps=t([0.0, 0.0, 0.0]),
    target_probs=t([[0.5, 0.3, 0.2]]),
    lambdas=t([1.0]),
    beta=1.0,
)


def test_pairwise_hand_computed_for_each_weighting():
    # gap: gaps .2, .3, .1 → w = 2/3, 1, 1/3 → (softplus(−1) + softplus(−2)) / 2
    assert pairwise_loss(**PAIR_EXAMPLE, weighting="gap").item() == pytest.approx(
        0.2200948492805977, abs=1e-9
    )
    # uniform: (2·softplus(−1) + softplus(−2)) / 3
    assert pairwise_loss(**PAIR_EXAMPLE, weighting="uniform").item() == pytest.approx(
        0.2511504620264727, abs=1e-9
    )
    # data: w01 = 1, w02 = .25, w12 = .5; w10 = .9 is a reversed pair and must be ignored.
    # (1.5·softplus(−1) + 0.25·softplus(−2)) / 1.75
    weights = torch.zeros(1, 3, 3, dtype=torch.float64)
    weights[0, 0, 1], weights[0, 0, 2], weights[0, 1, 2], weights[0, 1, 0] = 1.0, 0.25, 0.5, 0.9
    loss = pairwise_loss(**PAIR_EXAMPLE, weighting="data", pair_weights=weights)
    assert loss.item() == pytest.approx(0.2866425908789014, abs=1e-9)


def test_plackett_luce_hand_computed():
    # strict: −[(1 − lse(1, 0, −1)) + (0 − lse(0, −1))]
    assert plackett_luce_loss(**PAIR_EXAMPLE).item() == pytest.approx(0.7208676519626032, abs=1e-9)
    # ties q = [.4, .4, .2] (Breslow): −[(1 − lse(1, 0, −1)) + (0 − lse(1, 0, −1))] = 2·lse(1, 0, −1) − 1
    tied = {**PAIR_EXAMPLE, "target_probs": t([[0.4, 0.4, 0.2]])}
    assert plackett_luce_loss(**tied).item() == pytest.approx(1.8152119288887607, abs=1e-9)


def test_per_dimension_metrics_hand_computed():
    # Prompt 0: r = [1, 0, 2]; dim 0 = [.5, .3, .2]; dims 1, 2 no signal.
    # Prompt 1: r = [.5, 1, pad]; dim 0 = [.6, .4, 0], dim 1 = [.3, .7, 0]; dim 2 no signal.
    target_probs = t(
        [[0.5, 0.3, 0.2], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        [[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 0.0]],
    )
    metrics = per_dimension_metrics(ListwiseInputs.build(
        policy_logps=t([1.0, 0.0, 2.0], [0.5, 1.0, math.nan]),
        reference_logps=torch.zeros(2, 3, dtype=torch.float64),
        target_probs=target_probs,
        lambdas=None,
        beta=1.0,
        response_mask=torch.tensor([[True, True, True], [True, True, False]]),
    ))
    # dim 0 pairs: (0,1) +1 right, (0,2) −1 wrong, (1,2) −2 wrong, prompt 1 (0,1) −0.5 wrong.
    # dim 0 loss: mean(lse(1, 0, 2) − 0.9, lse(.5, 1) − 0.7); dim 1: prompt 1 (1,0) +0.5 right, lse(.5, 1) − 0.85.
    nan = math.nan
    torch.testing.assert_close(
        metrics["loss"], t(1.1408414743122433, 0.6240769841801067, nan), equal_nan=True
    )
    torch.testing.assert_close(metrics["accuracy"], t(0.25, 1.0, nan), equal_nan=True)
    torch.testing.assert_close(metrics["margin"], t(-0.625, 0.5, nan), equal_nan=True)
    torch.testing.assert_close(metrics["count"], t(4.0, 1.0, 0.0))
    torch.testing.assert_close(metrics["prompt_count"], t(2.0, 1.0, 0.0))


# ------------------------------------------------------------------------------------------------- special cases


@given(
    rewards=st.lists(st.floats(-50, 50), min_size=4, max_size=4),
    beta=st.floats(0.05, 1.0),
    chosen_first=st.booleans(),
)
@HYPOTHESIS
def test_k2_one_hot_equals_dpo_for_every_loss(rewards, beta, chosen_first):
    policy, reference = t(rewards[:2]), t(rewards[2:])
    c, r = (0, 1) if chosen_first else (1, 0)
    target = torch.zeros(1, 1, 2, dtype=torch.float64)
    target[0, 0, c] = 1.0
    expected = dpo_loss(policy[0, c], policy[0, r], reference[0, c], reference[0, r], beta)
    kwargs = dict(
        policy_logps=policy, reference_logps=reference, target_probs=target, lambdas=t([1.0]), beta=beta
    )
    for name, fn in VARIANTS.items():
        torch.testing.assert_close(fn(**kwargs)[0], expected, atol=1e-6, rtol=0, msg=name)
    data = pairwise_loss(
        **kwargs, weighting="data", pair_weights=torch.full((1, 2, 2), 0.3, dtype=torch.float64)
    )
    torch.testing.assert_close(data[0], expected, atol=1e-6, rtol=0)


def test_m1_is_single_objective_listwise_and_unused_dimension_drops_out():
    # Single-objective listwise DPO written out: −Σ p_i log softmax(r)_i.
    policy, reference = t([-1.0, -0.5, -2.0, -0.7]), t([-1.2, -0.9, -1.0, -0.7])
    p = t([[0.1, 0.6, 0.1, 0.2]])
    r = 0.3 * (policy - reference)
    expected = -(p[:, 0] * torch.log_softmax(r, -1)).sum(-1)
    torch.testing.assert_close(listwise_loss(policy, reference, p, t([1.0]), 0.3), expected)
    # m = 2 with λ = (1, 0): the second dimension must not matter.
    two = torch.cat([p, t([[0.7, 0.1, 0.1, 0.1]])], dim=1)
    torch.testing.assert_close(listwise_loss(policy, reference, two, t([1.0, 0.0]), 0.3), expected)


def test_masked_dimension_renormalises_lambda():
    policy, reference = t([-1.0, -0.5, -2.0]), t([-1.2, -0.9, -1.0])
    targets = t([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    masked = listwise_loss(
        policy,
        reference,
        targets,
        t([0.2, 0.5, 0.3]),
        0.1,
        dimension_mask=torch.tensor([[True, False, True]]),
    )
    # λ' = (0.2, 0, 0.3) / 0.5 = (0.4, 0, 0.6)
    torch.testing.assert_close(masked, listwise_loss(policy, reference, targets, t([0.4, 0.0, 0.6]), 0.1))
    # Default dimension_mask = rows with target mass: a zeroed row behaves like a masked one.
    zeroed = targets.clone()
    zeroed[0, 1] = 0.0
    torch.testing.assert_close(listwise_loss(policy, reference, zeroed, t([0.2, 0.5, 0.3]), 0.1), masked)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_prompt_without_signal_has_zero_loss_and_zero_gradient(name):
    # Prompt 0: every dimension masked. Prompt 1: all λ mass on its masked dimension. Prompt 2: a real signal.
    policy = t([-1.0, -2.0, -0.5], [-0.3, -1.0, -2.0], [-1.0, -0.2, -3.0]).requires_grad_()
    targets = t(
        [[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]],
        [[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]],
        [[0.2, 0.5, 0.3], [0.6, 0.2, 0.2]],
    )
    dimension_mask = torch.tensor([[False, False], [True, False], [True, True]])
    loss = VARIANTS[name](
        policy_logps=policy,
        reference_logps=torch.zeros_like(policy),
        target_probs=targets,
        lambdas=t([0.5, 0.5], [0.0, 1.0], [0.5, 0.5]),
        beta=0.5,
        dimension_mask=dimension_mask,
    )
    loss.sum().backward()
    assert loss[:2].tolist() == [0.0, 0.0]
    assert loss[2].item() > 0
    assert policy.grad[:2].abs().max().item() == 0.0
    assert policy.grad[2].abs().max().item() > 0


# ------------------------------------------------------------------------------------------------ property tests


@st.composite
def batches(draw, ties: bool = True, missing: bool = True, min_k: int = 2):
    """A padded batch built the way the pipeline builds it: integer ratings (ties), N/A scores, shorter lists."""
    b, k, m = draw(st.integers(1, 3)), draw(st.integers(min_k, 5)), draw(st.integers(1, 3))
    lengths = [draw(st.integers(2, k)) for _ in range(b)]
    response_mask = torch.tensor([[i < n for i in range(k)] for n in lengths])
    if ties:
        score = st.integers(1, 4).map(float)
    else:
        score = st.floats(-3, 3).map(lambda x: round(x, 2))
    if missing:
        score = st.one_of(score, st.just(math.nan))
    scores = torch.tensor(
        [[[draw(score) for _ in range(k)] for _ in range(m)] for _ in range(b)], dtype=torch.float64
    )
    tau = draw(st.sampled_from([0.5, 1.0, 2.0]))
    target_probs, dimension_mask = target_probs_from_scores(scores, tau, response_mask)
    logps = st.floats(-8, 0)
    policy = torch.tensor([[draw(logps) for _ in range(k)] for _ in range(b)], dtype=torch.float64)
    reference = torch.tensor([[draw(logps) for _ in range(k)] for _ in range(b)], dtype=torch.float64)
    # Padding slots hold garbage, as an unsanitised collator might leave them.
    policy = policy.masked_fill(~response_mask, math.nan)
    reference = reference.masked_fill(~response_mask, -math.inf)
    # λ ≥ 1e-3 or exactly 0 (λ-schedules never draw sub-1e-12 weights; mix_targets clamps such totals).
    weight = st.one_of(st.just(0.0), st.floats(1e-3, 1.0))
    raw = torch.tensor([[draw(weight) for _ in range(m)] for _ in range(b)], dtype=torch.float64)
    lambdas = raw / raw.sum(-1, keepdim=True).clamp_min(1e-12)
    return dict(
        policy_logps=policy,
        reference_logps=reference,
        target_probs=target_probs,
        lambdas=lambdas,
        beta=draw(st.sampled_from([0.1, 0.5, 1.0])),
        response_mask=response_mask,
        dimension_mask=dimension_mask,
    )


def naive_mixed_target(batch, b):
    """q_i = Σ_d λ'_d p*[d]_i with λ' renormalised over the unmasked dimensions, written as loops."""
    m, k = batch["target_probs"].shape[1:]
    weights = [batch["lambdas"][b, d].item() if batch["dimension_mask"][b, d] else 0.0 for d in range(m)]
    total = sum(weights)
    if total == 0:
        return [0.0] * k
    return [
        sum(weights[d] / total * batch["target_probs"][b, d, i].item() for d in range(m)) for i in range(k)
    ]


def naive_rewards(batch, policy, b):
    real = [i for i in range(policy.shape[1]) if batch["response_mask"][b, i]]
    return real, {i: batch["beta"] * (policy[b, i] - batch["reference_logps"][b, i]) for i in real}


def naive_listwise(batch, policy):
    losses = []
    for b in range(policy.shape[0]):
        q = naive_mixed_target(batch, b)
        real, r = naive_rewards(batch, policy, b)
        log_z = torch.log(sum(torch.exp(r[j]) for j in real))
        losses.append(sum(-q[i] * (r[i] - log_z) for i in real))
    return torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in losses])


def naive_pairwise(batch, policy, weighting):
    losses = []
    for b in range(policy.shape[0]):
        q = naive_mixed_target(batch, b)
        real, r = naive_rewards(batch, policy, b)
        pairs = [(i, j) for i in real for j in real if q[i] > q[j] + TIE_TOLERANCE]
        if weighting == "best_worst":
            top, bottom = max(q[i] for i in real), min(q[i] for i in real)
            pairs = [
                (i, j) for i, j in pairs if q[i] >= top - TIE_TOLERANCE and q[j] <= bottom + TIE_TOLERANCE
            ]
        w = {(i, j): (q[i] - q[j] if weighting == "gap" else 1.0) for i, j in pairs}
        total = sum(w.values())
        loss = sum(w[i, j] * -torch.nn.functional.logsigmoid(r[i] - r[j]) for i, j in pairs)
        losses.append(loss / total if pairs else torch.zeros((), dtype=torch.float64))
    return torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in losses])


def naive_plackett_luce(batch, policy):
    """Rank by descending q in tie groups; each group but the last picks against itself and everything below."""
    losses = []
    for b in range(policy.shape[0]):
        q = naive_mixed_target(batch, b)
        real, r = naive_rewards(batch, policy, b)
        groups = []
        for i in sorted(real, key=lambda i: -q[i]):
            if groups and abs(q[groups[-1][0]] - q[i]) <= TIE_TOLERANCE:
                groups[-1].append(i)
            else:
                groups.append([i])
        loss = torch.zeros((), dtype=torch.float64)
        for g, group in enumerate(groups[:-1]):
            remaining = [j for later in groups[g:] for j in later]
            log_z = torch.log(sum(torch.exp(r[j]) for j in remaining))
            loss = loss - sum(r[i] - log_z for i in group)
        losses.append(loss)
    return torch.stack(losses)


NAIVE = {
    "listwise": naive_listwise,
    "dpo": lambda batch, policy: naive_pairwise(batch, policy, "best_worst"),
    "pairwise_gap": lambda batch, policy: naive_pairwise(batch, policy, "gap"),
    "pairwise_uniform": lambda batch, policy: naive_pairwise(batch, policy, "uniform"),
    "plackett_luce": naive_plackett_luce,
}


@pytest.mark.parametrize("name", list(VARIANTS))
@given(batch=batches(ties=False))
@HYPOTHESIS
def test_value_and_gradient_match_naive_loops(name, batch):
    # Real-valued scores (ties rare but possible: the naive loops implement the documented tie rules too).
    policy = batch["policy_logps"].clone().requires_grad_()
    loss = VARIANTS[name](**{**batch, "policy_logps": policy})
    (grad,) = torch.autograd.grad(loss.sum(), policy)
    naive_policy = batch["policy_logps"].clone().requires_grad_()
    expected = NAIVE[name](batch, naive_policy)
    # A batch without any preference pair gives the naive loops a constant: its gradient is zero.
    naive_grad = None
    if expected.requires_grad:
        naive_grad = torch.autograd.grad(expected.sum(), naive_policy, allow_unused=True)[0]
    naive_grad = torch.zeros_like(grad) if naive_grad is None else naive_grad.nan_to_num(0.0)
    torch.testing.assert_close(loss, expected, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(
        grad, naive_grad.masked_fill(~batch["response_mask"], 0.0), atol=1e-9, rtol=1e-9
    )
    assert torch.isfinite(grad).all()
    assert grad[~batch["response_mask"]].abs().sum().item() == 0.0


@given(batch=batches(ties=True))
@HYPOTHESIS
def test_plackett_luce_with_ties_matches_grouped_ranking(batch):
    torch.testing.assert_close(plackett_luce_loss(**batch), naive_plackett_luce(batch, batch["policy_logps"]))


@given(batch=batches(), shift=st.lists(st.floats(-20, 20), min_size=3, max_size=3))
@HYPOTHESIS
def test_adding_a_constant_to_a_prompts_rewards_changes_nothing(batch, shift):
    shifted = batch["policy_logps"] + t(shift[: batch["policy_logps"].shape[0]]).reshape(-1, 1)
    for name, fn in VARIANTS.items():
        torch.testing.assert_close(
            fn(**{**batch, "policy_logps": shifted}), fn(**batch), atol=1e-9, rtol=1e-9, msg=name
        )


def permute_responses(batch, perms):
    """Reorder the response slots of each prompt b by perms[b] (targets, masks and log-probs together)."""
    index = torch.stack(perms)
    out = dict(batch)
    for key in ("policy_logps", "reference_logps", "response_mask"):
        out[key] = batch[key].gather(1, index)
    m = batch["target_probs"].shape[1]
    out["target_probs"] = batch["target_probs"].gather(2, index.unsqueeze(1).expand(-1, m, -1))
    return out


@given(batch=batches(ties=True), seed=st.integers(0, 2**16))
@HYPOTHESIS
def test_permuting_responses_with_targets_changes_nothing(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    b, k = batch["policy_logps"].shape
    permuted = permute_responses(batch, [torch.randperm(k, generator=generator) for _ in range(b)])
    for name, fn in VARIANTS.items():
        torch.testing.assert_close(fn(**permuted), fn(**batch), atol=1e-9, rtol=1e-9, msg=name)
    for key, value in per_dimension_metrics(ListwiseInputs.build(**batch)).items():
        torch.testing.assert_close(
            per_dimension_metrics(ListwiseInputs.build(**permuted))[key], value, equal_nan=True, msg=key
        )


@given(batch=batches(missing=False))
@HYPOTHESIS
def test_listwise_is_lambda_weighted_sum_of_per_dimension_losses(batch):
    b, m = batch["lambdas"].shape
    per_dimension = torch.stack(
        [
            listwise_loss(**{**batch, "lambdas": torch.eye(m, dtype=torch.float64)[d].expand(b, m)})
            for d in range(m)
        ],
        dim=-1,
    )  # [B, m]: L_d for every prompt
    weights = batch["lambdas"] * batch["dimension_mask"]
    renormalised = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(listwise_loss(**batch), (renormalised * per_dimension).sum(-1))
    # With no dimension masked this is the identity (docs/spec.md §1) L_λ = Σ_d λ_d L_d, no renormalisation involved.
    if bool(batch["dimension_mask"].all()):
        torch.testing.assert_close(listwise_loss(**batch), (batch["lambdas"] * per_dimension).sum(-1))


@given(batch=batches(), extra=st.integers(1, 3))
@HYPOTHESIS
def test_padded_list_equals_unpadded_and_padding_gets_zero_gradient(batch, extra):
    b, m, _ = batch["target_probs"].shape
    padded = dict(batch)
    for key, fill in (("policy_logps", math.nan), ("reference_logps", math.inf)):
        padded[key] = torch.cat([batch[key], torch.full((b, extra), fill, dtype=torch.float64)], dim=1)
    padded["response_mask"] = torch.cat(
        [batch["response_mask"], torch.zeros(b, extra, dtype=torch.bool)], dim=1
    )
    padded["target_probs"] = torch.cat(
        [batch["target_probs"], torch.zeros(b, m, extra, dtype=torch.float64)], -1
    )
    for name, fn in VARIANTS.items():
        policy = padded["policy_logps"].clone().requires_grad_()
        loss = fn(**{**padded, "policy_logps": policy})
        (grad,) = torch.autograd.grad(loss.sum(), policy)
        torch.testing.assert_close(loss, fn(**batch), atol=1e-9, rtol=1e-9, msg=name)
        assert torch.isfinite(grad).all(), name
        assert grad[~padded["response_mask"]].abs().sum().item() == 0.0, name
    for key, value in per_dimension_metrics(ListwiseInputs.build(**padded)).items():
        torch.testing.assert_close(
            value, per_dimension_metrics(ListwiseInputs.build(**batch))[key], equal_nan=True, msg=key
        )


# --------------------------------------------------------------------------------------------- dispatch and errors


def test_losses_registry_dispatches_by_name_with_keyword_arguments():
    assert set(LOSSES) == {"listwise", "dpo", "pairwise", "plackett_luce"}
    assert LOSSES["dpo"] is best_worst_dpo_loss
    kwargs = {
        **PAIR_EXAMPLE,
        "response_mask": torch.ones(1, 3, dtype=torch.bool),
        "dimension_mask": torch.ones(1, 1, dtype=torch.bool),
    }
    values = {name: fn(**kwargs) for name, fn in LOSSES.items()}
    # listwise: lse(1, 0, −1) − Σ q_i r_i = 1.4076059644 − 0.3
    assert values["listwise"].item() == pytest.approx(1.1076059644443804, abs=1e-9)
    assert values["dpo"].item() == pytest.approx(softplus(-2), abs=1e-9)
    assert values["pairwise"].item() == pytest.approx(0.2200948492805977, abs=1e-9)
    assert values["plackett_luce"].item() == pytest.approx(0.7208676519626032, abs=1e-9)


def test_metrics_count_reward_ties_as_wrong():
    # policy == reference (the start of training): every r is 0, so no pair is ranked right yet.
    logps = t([-1.0, -2.0, -3.0])
    metrics = per_dimension_metrics(ListwiseInputs.build(logps, logps, PAIR_EXAMPLE["target_probs"], None, 0.1))
    assert metrics["accuracy"].tolist() == [0.0] and metrics["margin"].tolist() == [0.0]
    assert metrics["count"].tolist() == [3.0]


def test_metrics_are_detached():
    policy = PAIR_EXAMPLE["policy_logps"].clone().requires_grad_()
    metrics = per_dimension_metrics(
        ListwiseInputs.build(policy, PAIR_EXAMPLE["reference_logps"], PAIR_EXAMPLE["target_probs"], None, 1.0)
    )
    assert not any(value.requires_grad for value in metrics.values())


def test_shape_mismatch_names_the_argument_and_the_shapes():
    with pytest.raises(ValueError, match=r"target_probs has shape \(1, 3\).*\[1, m, 3\]"):
        listwise_loss(
            PAIR_EXAMPLE["policy_logps"], PAIR_EXAMPLE["reference_logps"], t([0.5, 0.3, 0.2]), t([1.0]), 1.0
        )
    with pytest.raises(ValueError, match=r"lambdas has shape \(1, 2\).*\[1, 1\]"):
        plackett_luce_loss(**{**PAIR_EXAMPLE, "lambdas": t([0.5, 0.5])})
    with pytest.raises(ValueError, match=r"response_mask has shape \(1, 2\)"):
        best_worst_dpo_loss(**PAIR_EXAMPLE, response_mask=torch.ones(1, 2, dtype=torch.bool))


def test_invalid_beta_and_pair_weights_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="beta must be > 0.*got 0"):
        listwise_loss(**{**PAIR_EXAMPLE, "beta": 0.0})
    with pytest.raises(ValueError, match="beta must be > 0.*got -1"):
        dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), beta=-1.0)
    with pytest.raises(ValueError, match="weighting='data'.*pair_weights missing"):
        pairwise_loss(**PAIR_EXAMPLE, weighting="data")
    with pytest.raises(ValueError, match="'agreement' is not one of"):
        pairwise_loss(**PAIR_EXAMPLE, weighting="agreement")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*1.5"):
        pairwise_loss(
            **PAIR_EXAMPLE, weighting="data", pair_weights=torch.full((1, 3, 3), 1.5, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match=r"pair_weights has shape \(1, 2, 2\)"):
        pairwise_loss(**PAIR_EXAMPLE, weighting="data", pair_weights=torch.ones(1, 2, 2, dtype=torch.float64))


def test_target_nll_hand_computed_with_padding_and_empty_target():
    # prompt 0: p*[0] = (0.75, 0.25, 0), p*[1] = (0, 0.5, 0.5), λ = (0.5, 0.5) → q = (0.375, 0.375, 0.25);
    # prompt 1: slot 2 is padding (its logp -inf must not leak), no signal at all → loss 0.
    token_logps = t([-1.0, -2.0, -4.0], [-3.0, -1.0, -math.inf])
    targets = t([[0.75, 0.25, 0.0], [0.0, 0.5, 0.5]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    lambdas = t([0.5, 0.5], [0.5, 0.5])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    token_logps.requires_grad_(True)
    loss = target_nll_loss(token_logps, mix_targets(targets, lambdas, targets.sum(-1) > 0), response_mask=mask)
    assert loss.tolist() == pytest.approx([0.375 * 1 + 0.375 * 2 + 0.25 * 4, 0.0])
    loss.sum().backward()
    assert token_logps.grad.flatten().tolist() == pytest.approx([-0.375, -0.375, -0.25, 0.0, 0.0, 0.0])


def test_target_nll_best_only_weighs_the_tied_best_responses_equally():
    # prompt 0: q = (0.375, 0.375, 0.25) (as above): responses 0 and 1 tie for best → −(−1 − 2)/2;
    # prompt 1: q = (0, 0.6, 0.4) over the real slots, slot 2 padding → −(−1); prompt 2: no signal → 0.
    token_logps = t([-1.0, -2.0, -4.0], [-3.0, -1.0, -math.inf], [-1.0, -1.0, -1.0])
    targets = t([[0.75, 0.25, 0.0], [0.0, 0.5, 0.5]], [[0.0, 1.0, 0.0], [0.0, 0.2, 0.8]], [[0.0] * 3, [0.0] * 3])
    lambdas = t([0.5, 0.5], [0.5, 0.5], [0.5, 0.5])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    mixed = mix_targets(targets, lambdas, targets.sum(-1) > 0)
    loss = target_nll_loss(token_logps, mixed, response_mask=mask, best_only=True)
    assert loss.tolist() == pytest.approx([1.5, 1.0, 0.0])


def test_target_nll_k2_one_hot_is_the_chosen_nll_in_both_forms():
    token_logps = t([-0.7, -2.5])
    targets, lambdas = t([[1.0, 0.0]]), t([1.0])
    for best_only in (False, True):
        mixed = mix_targets(targets, lambdas)
        assert target_nll_loss(token_logps, mixed, best_only=best_only).item() == pytest.approx(0.7)


def test_target_nll_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="policy_token_logps must be"):
        target_nll_loss(torch.zeros(3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"mixed_target has shape \(1, 2\)"):
        target_nll_loss(torch.zeros(1, 3), torch.zeros(1, 2))


def test_objectives_on_built_inputs_equal_the_public_losses():
    kwargs = {**PAIR_EXAMPLE, "response_mask": torch.ones(1, 3, dtype=torch.bool)}
    assert set(OBJECTIVES) == set(LOSSES)
    inputs = ListwiseInputs.build(**kwargs)
    for name, objective in OBJECTIVES.items():
        torch.testing.assert_close(objective(inputs), LOSSES[name](**kwargs), rtol=0, atol=0, msg=name)
    assert inputs.has_signal.tolist() == [True]
    assert listwise_loss.__name__ == "listwise_loss" and "L_λ = − Σ_i q_i" in listwise_loss.__doc__


def test_an_objective_on_inputs_built_without_lambda_says_so():
    inputs = ListwiseInputs.build(**{**PAIR_EXAMPLE, "lambdas": None})
    assert inputs.mixed_target is None
    with pytest.raises(ValueError, match="listwise needs λ"):
        OBJECTIVES["listwise"](inputs)
