"""Causal-LM token losses (kdistill.losses.tokens, the token methods) against explicit per-token loops.

Every reference value here is an explicit Python loop over tokens and vocabulary entries on float64
Python numbers (softmax written out by hand, math.exp / math.log), never the function under test nor
torch.nn.functional.kl_div. Sizes are small: N = 7 tokens, V = 11 vocabulary entries, hidden d = 5.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.losses.tokens import (TeacherHidden, TokenStates, forward_kl, generalized_jsd, reverse_kl,
                                    skew_kl, skew_reverse_kl, token_terms, top_k_of, total_variation)
from kdistill.methods import build_method
from kdistill.methods.base import check_task

N, V, D, D_TEACHER = 7, 11, 5, 6
F64 = torch.float64
VALUE_TOL = 1e-10  # float64 values against the loop
CHUNK_TOL = 1e-12  # the same quantity, chunked differently
GRAD_TOL = 1e-11  # float64 gradients against a reference autograd or a closed form


# --- the explicit references ----------------------------------------------------------------------

def loop_log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    """log softmax(row / T), by hand (max-shifted log-sum-exp)."""
    scaled = [v / temperature for v in row]
    top = max(scaled)
    log_total = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_total for v in scaled]


def loop_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    return [math.exp(v) for v in loop_log_softmax(row, temperature)]


def loop_kl(a: list[float], b: list[float]) -> float:
    """KL(a ‖ b) = Σ_v a_v (log a_v − log b_v) over probabilities; bins with a_v = 0 add 0."""
    return sum(a[v] * (math.log(a[v]) - math.log(b[v])) for v in range(len(a)) if a[v] > 0)


def loop_mix(a: list[float], b: list[float], weight_a: float) -> list[float]:
    return [weight_a * a[v] + (1.0 - weight_a) * b[v] for v in range(len(a))]


def loop_divergence(name: str, p: list[float], q: list[float], param: float | None = None) -> float:
    """One token's divergence between teacher probabilities p and student probabilities q."""
    if name == "forward_kl":
        return loop_kl(p, q)
    if name == "reverse_kl":
        return loop_kl(q, p)
    if name == "jsd":
        if param == 0.0:
            return loop_kl(p, q)
        if param == 1.0:
            return loop_kl(q, p)
        m = loop_mix(p, q, param)
        return param * loop_kl(p, m) + (1.0 - param) * loop_kl(q, m)
    if name == "skew_kl":
        return loop_kl(p, loop_mix(p, q, param))
    if name == "skew_reverse_kl":
        return loop_kl(q, loop_mix(q, p, param))
    if name == "tv":
        return 0.5 * sum(abs(p[v] - q[v]) for v in range(len(p)))
    raise ValueError(name)


def loop_linear(hidden: torch.Tensor, head: torch.Tensor, bias: torch.Tensor | None) -> list[list[float]]:
    """logits[i][v] = Σ_j hidden[i][j] · head[v][j] (+ bias[v])."""
    h, w = hidden.detach().tolist(), head.detach().tolist()
    b = bias.detach().tolist() if bias is not None else [0.0] * len(w)
    return [[sum(h[i][j] * w[v][j] for j in range(len(h[i]))) + b[v] for v in range(len(w))] for i in range(len(h))]


def loop_ce(logits: list[list[float]], labels: list[int], smoothing: float = 0.0) -> float:
    """Mean over tokens of (1 − ε)·(−log softmax(z)[y]) + ε·mean_v(−log softmax(z)[v])."""
    total = 0.0
    for i in range(len(logits)):
        logp = loop_log_softmax(logits[i])
        total += (1.0 - smoothing) * -logp[labels[i]] + smoothing * -sum(logp) / len(logp)
    return total / len(logits)


def loop_mean_divergence(name: str, param: float | None, student_logits: list[list[float]],
                         teacher_logits: list[list[float]], temperature: float) -> float:
    """Mean over tokens of the divergence of softmax(teacher / T) and softmax(student / T)."""
    total = 0.0
    for i in range(len(student_logits)):
        p = loop_softmax(teacher_logits[i], temperature)
        q = loop_softmax(student_logits[i], temperature)
        total += loop_divergence(name, p, q, param)
    return total / len(student_logits)


def loop_top_k_bins(p: list[float], q: list[float], k: int) -> tuple[list[float], list[float]]:
    """p and q over k + 1 bins: the teacher's k most likely tokens, then one tail bin with the rest."""
    order = sorted(range(len(p)), key=lambda v: -p[v])
    top, rest = order[:k], order[k:]
    return ([p[v] for v in top] + [sum(p[v] for v in rest)], [q[v] for v in top] + [sum(q[v] for v in rest)])


def loop_mean_top_k_divergence(name: str, param: float | None, student_logits: list[list[float]],
                               teacher_logits: list[list[float]], temperature: float, k: int) -> float:
    total = 0.0
    for i in range(len(student_logits)):
        p = loop_softmax(teacher_logits[i], temperature)
        q = loop_softmax(student_logits[i], temperature)
        total += loop_divergence(name, *loop_top_k_bins(p, q, k), param)
    return total / len(student_logits)


# --- fixtures ---------------------------------------------------------------------------------------

def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


def _labels(seed: int, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n,), generator=g)


def _hand_log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) log-probabilities from the hand-written log-softmax (not torch.log_softmax)."""
    return torch.tensor([loop_log_softmax(row, temperature) for row in logits.tolist()], dtype=F64)


def _student(seed: int = 0, chunk: int = 1024, bias: bool = True) -> TokenStates:
    """A student's scored tokens: hidden (N, d) and head (V, d) [and bias (V,)], all leaves with grad."""
    hidden = _randn(seed, N, D, scale=1.5).requires_grad_(True)
    head = _randn(seed + 1, V, D).requires_grad_(True)
    head_bias = _randn(seed + 2, V, scale=0.5).requires_grad_(True) if bias else None
    return TokenStates(hidden=hidden, head=head, labels=_labels(seed + 3), head_bias=head_bias, chunk=chunk)


def _rechunk(student: TokenStates, chunk: int) -> TokenStates:
    """The same leaves with another chunk size (their .grad accumulates: reset it between uses)."""
    return TokenStates(student.hidden, student.head, student.labels, student.head_bias, chunk)


def _teacher(seed: int = 100, bias: bool = True) -> TeacherHidden:
    """A dense teacher with its own hidden width (constants)."""
    head_bias = _randn(seed + 2, V, scale=0.5) if bias else None
    return TeacherHidden(_randn(seed, N, D_TEACHER, scale=1.5), _randn(seed + 1, V, D_TEACHER), head_bias)


def _student_logits(student: TokenStates) -> list[list[float]]:
    return loop_linear(student.hidden, student.head, student.head_bias)


def _teacher_logits(teacher: TeacherHidden) -> list[list[float]]:
    return loop_linear(teacher.hidden, teacher.head, teacher.head_bias)


# The divergences under test, each as (id, function of (p, q), loop name, loop parameter).
DIVERGENCES = [
    ("forward_kl", forward_kl, "forward_kl", None),
    ("reverse_kl", reverse_kl, "reverse_kl", None),
    ("jsd_0.3", lambda p, q: generalized_jsd(p, q, 0.3), "jsd", 0.3),
    ("jsd_0.7", lambda p, q: generalized_jsd(p, q, 0.7), "jsd", 0.7),
    ("skew_kl_0.1", lambda p, q: skew_kl(p, q, 0.1), "skew_kl", 0.1),
    ("skew_kl_0.4", lambda p, q: skew_kl(p, q, 0.4), "skew_kl", 0.4),
    ("skew_reverse_kl_0.1", lambda p, q: skew_reverse_kl(p, q, 0.1), "skew_reverse_kl", 0.1),
    ("skew_reverse_kl_0.4", lambda p, q: skew_reverse_kl(p, q, 0.4), "skew_reverse_kl", 0.4),
    ("tv", total_variation, "tv", None),
]
DIVERGENCE_IDS = [d[0] for d in DIVERGENCES]


def _assert_values(got: torch.Tensor, expected: list[float] | float, tol: float, what: str = "") -> None:
    got_list = got.detach().reshape(-1).tolist()
    exp_list = expected if isinstance(expected, list) else [expected]
    assert len(got_list) == len(exp_list), (what, got_list, exp_list)
    worst = max(abs(a - b) for a, b in zip(got_list, exp_list))
    assert worst <= tol, f"{what}: off by {worst:.3g} (> {tol:g}); got {got_list}, expected {exp_list}"


# --- 1. each divergence against the loop, per token -------------------------------------------------

@pytest.mark.parametrize("_id,fn,name,param", DIVERGENCES, ids=DIVERGENCE_IDS)
def test_divergence_matches_explicit_loop_per_token(_id, fn, name, param):
    """Per-token value of every divergence equals the loop over vocabulary entries (float64, 1e-10)."""
    teacher_logits, student_logits = _randn(1, N, V, scale=2.0), _randn(2, N, V, scale=2.0)
    p, q = _hand_log_probs(teacher_logits), _hand_log_probs(student_logits)
    got = fn(p, q)
    assert got.shape == (N,) and got.dtype == F64
    expected = []
    for i in range(N):
        p_i = [math.exp(x) for x in p[i].tolist()]
        q_i = [math.exp(x) for x in q[i].tolist()]
        expected.append(loop_divergence(name, p_i, q_i, param))
    assert min(expected) > 1e-3  # real, non-degenerate values
    _assert_values(got, expected, VALUE_TOL, _id)


def test_forward_kl_counts_teacher_zero_bins_as_zero_with_finite_gradient():
    """A teacher bin with no mass (log p = −inf) adds 0 to KL(p ‖ q) and no NaN to the student's gradient."""
    p = _hand_log_probs(_randn(3, N, V, scale=2.0))
    p[:, 0] = -math.inf
    p = p - torch.logsumexp(p, -1, keepdim=True)
    q = _hand_log_probs(_randn(4, N, V, scale=2.0)).requires_grad_(True)
    got = forward_kl(p, q)
    expected = [loop_kl([math.exp(x) for x in p[i].tolist()], [math.exp(x) for x in q[i].tolist()]) for i in range(N)]
    _assert_values(got, expected, VALUE_TOL, "forward KL with a zero teacher bin")
    got.sum().backward()
    assert torch.isfinite(q.grad).all()


# --- 2. identities and bounds -------------------------------------------------------------------------

def test_jsd_and_skew_ends_are_the_plain_kls():
    """JSD(β = 0) is forward KL, JSD(β = 1) reverse KL; skew 0 gives the plain KLs."""
    p, q = _hand_log_probs(_randn(5, N, V, scale=2.0)), _hand_log_probs(_randn(6, N, V, scale=2.0))
    fkl, rkl = forward_kl(p, q), reverse_kl(p, q)
    assert (fkl - rkl).abs().max() > 0.05  # the two directions genuinely differ here
    _assert_values(generalized_jsd(p, q, 0.0), fkl.tolist(), 1e-15, "JSD(0)")
    _assert_values(generalized_jsd(p, q, 1.0), rkl.tolist(), 1e-15, "JSD(1)")
    _assert_values(skew_kl(p, q, 0.0), fkl.tolist(), 1e-15, "skew KL(0)")
    _assert_values(skew_reverse_kl(p, q, 0.0), rkl.tolist(), 1e-15, "skew reverse KL(0)")
    # the mixture form itself tends to 0 at the ends: the ends are the KLs by definition
    assert generalized_jsd(p, q, 1e-9).max() < 1e-6
    assert generalized_jsd(p, q, 1.0 - 1e-9).max() < 1e-6


@pytest.mark.parametrize("_id,fn,name,param", DIVERGENCES, ids=DIVERGENCE_IDS)
def test_divergence_is_non_negative_and_zero_on_equal_distributions(_id, fn, name, param):
    """Every divergence is ≥ 0 on random pairs, and 0 when p == q (also for a peaked distribution)."""
    for seed in range(5):
        p = _hand_log_probs(_randn(10 + seed, N, V, scale=1.0 + 2 * seed))
        q = _hand_log_probs(_randn(20 + seed, N, V, scale=1.0 + 2 * seed))
        assert (fn(p, q) >= 0).all(), (seed, fn(p, q))
        assert fn(p, p.clone()).abs().max() < 1e-14
        assert (fn(p, q) > 0).all()  # a distinct pair is strictly positive


def test_total_variation_is_at_most_one_and_reaches_it_on_disjoint_supports():
    """TV ≤ 1 on random pairs (also very peaked ones), and ≈ 1 when the two put their mass on different tokens."""
    for seed in range(5):
        p = _hand_log_probs(_randn(30 + seed, N, V, scale=10.0 ** seed))
        q = _hand_log_probs(_randn(40 + seed, N, V, scale=10.0 ** seed))
        assert (total_variation(p, q) <= 1.0 + 1e-12).all()  # rounding: Σp is 1 to ~1e-16 · V
    peaked_a = torch.full((1, V), -100.0, dtype=F64)
    peaked_b = peaked_a.clone()
    peaked_a[0, 0] = peaked_b[0, 1] = 100.0
    tv = total_variation(_hand_log_probs(peaked_a), _hand_log_probs(peaked_b))
    _assert_values(tv, [1.0], 1e-12, "TV of disjoint supports")


@pytest.mark.parametrize("bad", [-0.1, 1.1])
def test_jsd_and_skew_reject_out_of_range_parameters(bad):
    p = _hand_log_probs(_randn(7, 2, V))
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(p, p, bad)
    with pytest.raises(ValueError, match="skew"):
        skew_kl(p, p, bad)
    with pytest.raises(ValueError, match="skew"):
        skew_reverse_kl(p, p, 1.0)


# --- 3. token_terms with a dense teacher -------------------------------------------------------------

TEMPERATURE = 2.0


@pytest.mark.parametrize("_id,fn,name,param", DIVERGENCES, ids=DIVERGENCE_IDS)
def test_token_terms_dense_teacher_matches_loop(_id, fn, name, param):
    """Mean CE (at T = 1) and mean divergence (both distributions at T = 2) equal the loop over the same tokens."""
    student, teacher = _student(chunk=3), _teacher()
    ce, value = token_terms(student, teacher, fn, temperature=TEMPERATURE)
    zs, zt = _student_logits(student), _teacher_logits(teacher)
    expected_ce = loop_ce(zs, student.labels.tolist())
    expected_div = loop_mean_divergence(name, param, zs, zt, TEMPERATURE)
    assert expected_div > 1e-3
    assert abs(expected_div - loop_mean_divergence(name, param, zs, zt, 1.0)) > 1e-3  # T matters here
    _assert_values(ce, expected_ce, VALUE_TOL, "CE")
    _assert_values(value, expected_div, VALUE_TOL, f"mean {_id}")


def test_token_terms_computes_float64_inputs_in_float64():
    """float64 hidden states and heads give float64 results (not silently rounded to float32)."""
    ce, value = token_terms(_student(), _teacher(), forward_kl, temperature=TEMPERATURE)
    assert ce.dtype == F64 and value.dtype == F64, (ce.dtype, value.dtype)


def test_token_terms_label_smoothing_matches_loop():
    """CE with label smoothing ε equals (1 − ε)·NLL + ε·mean over the vocabulary of −log q."""
    student = _student(chunk=2)
    ce, value = token_terms(student, None, None, label_smoothing=0.1)
    _assert_values(ce, loop_ce(_student_logits(student), student.labels.tolist(), 0.1), VALUE_TOL, "smoothed CE")
    assert value.item() == 0.0


def _grads(student: TokenStates) -> list[torch.Tensor]:
    return [t.grad.clone() for t in (student.hidden, student.head, student.head_bias)]


def _zero_grads(student: TokenStates) -> None:
    for t in (student.hidden, student.head, student.head_bias):
        t.grad = None


def _reference_loss(student: TokenStates, teacher: TeacherHidden, name: str, temperature: float,
                    alpha: float) -> torch.Tensor:
    """alpha·CE + (1 − alpha)·divergence by plain dense autograd over all tokens at once (no chunks)."""
    logits = student.hidden @ student.head.T + student.head_bias
    log_probs = torch.log_softmax(logits, -1)
    ce = -log_probs[torch.arange(student.tokens), student.labels].mean()
    q = torch.log_softmax(logits / temperature, -1)
    p = torch.log_softmax((teacher.hidden @ teacher.head.T + teacher.head_bias) / temperature, -1)
    if name == "forward_kl":
        div = (p.exp() * (p - q)).sum(-1).mean()
    elif name == "reverse_kl":
        div = (q.exp() * (q - p)).sum(-1).mean()
    else:  # tv
        div = 0.5 * (p.exp() - q.exp()).abs().sum(-1).mean()
    return alpha * ce + (1 - alpha) * div


@pytest.mark.parametrize("name,fn", [("forward_kl", forward_kl), ("reverse_kl", reverse_kl), ("tv", total_variation)])
def test_token_terms_does_not_depend_on_chunk_values_or_gradients(name, fn):
    """Chunk 1, 3 and 100 give the same values and the same gradients (through checkpointing) w.r.t. the
    student's hidden states, head and bias, equal to those of a plain dense autograd computation."""
    base, teacher, alpha = _student(seed=50), _teacher(seed=60), 0.3
    values, grads = [], []
    for chunk in (1, 3, 100):
        student = _rechunk(base, chunk)
        _zero_grads(student)
        ce, value = token_terms(student, teacher, fn, temperature=TEMPERATURE)
        (alpha * ce + (1 - alpha) * value).backward()
        values.append((ce.item(), value.item()))
        grads.append(_grads(student))
    for (ce, value), chunk_grads, chunk in zip(values[1:], grads[1:], (3, 100)):
        assert abs(ce - values[0][0]) <= CHUNK_TOL and abs(value - values[0][1]) <= CHUNK_TOL, (chunk, values)
        for g, g1, what in zip(chunk_grads, grads[0], ("hidden", "head", "bias")):
            assert (g - g1).abs().max() <= CHUNK_TOL, (chunk, what, (g - g1).abs().max().item())
    _zero_grads(base)
    _reference_loss(base, teacher, name, TEMPERATURE, alpha).backward()
    reference = _grads(base)
    for g, r, what in zip(grads[0], reference, ("hidden", "head", "bias")):
        assert r.abs().max() > 1e-3
        assert (g - r).abs().max() <= GRAD_TOL, (what, (g - r).abs().max().item())


# --- 4. top-k teachers ---------------------------------------------------------------------------------

TOP_K_DIVERGENCES = [("forward_kl", forward_kl, "forward_kl", None), ("reverse_kl", reverse_kl, "reverse_kl", None),
                     ("jsd_0.5", lambda p, q: generalized_jsd(p, q, 0.5), "jsd", 0.5)]


def _dense_teacher_logits(teacher: TeacherHidden) -> torch.Tensor:
    return torch.tensor(_teacher_logits(teacher), dtype=F64)


@pytest.mark.parametrize("_id,fn,name,param", TOP_K_DIVERGENCES, ids=[d[0] for d in TOP_K_DIVERGENCES])
def test_top_k_with_k_equal_to_vocabulary_is_the_dense_loss(_id, fn, name, param):
    """top_k_of(teacher logits, k = V) through token_terms gives the dense TeacherHidden values."""
    student, teacher = _student(chunk=3), _teacher()
    top = top_k_of(_dense_teacher_logits(teacher), k=V, temperature=TEMPERATURE)
    assert torch.isneginf(top.tail_logmass).all()
    ce_k, value_k = token_terms(student, top, fn, temperature=TEMPERATURE)
    ce_d, value_d = token_terms(student, teacher, fn, temperature=TEMPERATURE)
    _assert_values(ce_k, ce_d.item(), CHUNK_TOL, "CE")
    _assert_values(value_k, value_d.item(), VALUE_TOL, f"top-V {_id} against dense")
    expected = loop_mean_divergence(name, param, _student_logits(student), _teacher_logits(teacher), TEMPERATURE)
    _assert_values(value_k, expected, VALUE_TOL, f"top-V {_id} against the loop")


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("_id,fn,name,param", TOP_K_DIVERGENCES, ids=[d[0] for d in TOP_K_DIVERGENCES])
def test_top_k_below_vocabulary_is_the_k_plus_one_bin_divergence(_id, fn, name, param, k):
    """For k < V the value is the divergence over k + 1 bins (the teacher's k tokens and one tail bin, for
    both sides); for forward KL it is at most the dense forward KL (data-processing inequality)."""
    student, teacher = _student(chunk=3), _teacher()
    zs, zt = _student_logits(student), _teacher_logits(teacher)
    top = top_k_of(_dense_teacher_logits(teacher), k=k, temperature=TEMPERATURE)
    _, value = token_terms(student, top, fn, temperature=TEMPERATURE)
    expected = loop_mean_top_k_divergence(name, param, zs, zt, TEMPERATURE, k)
    dense = loop_mean_divergence(name, param, zs, zt, TEMPERATURE)
    assert abs(expected - dense) > 1e-3  # the coarse-graining changes the value here
    _assert_values(value, expected, VALUE_TOL, f"top-{k} {_id}")
    if name == "forward_kl":
        assert value.item() <= dense + 1e-12
        # per token too
        for i in range(N):
            p, q = loop_softmax(zt[i], TEMPERATURE), loop_softmax(zs[i], TEMPERATURE)
            assert loop_kl(*loop_top_k_bins(p, q, k)) <= loop_kl(p, q) + 1e-12


def test_top_k_gradients_match_the_k_plus_one_bin_autograd():
    """Gradients through the top-k path equal a dense autograd of forward KL over the k + 1 bins."""
    k, base, teacher = 3, _student(seed=70), _teacher(seed=80)
    top = top_k_of(_dense_teacher_logits(teacher), k=k, temperature=TEMPERATURE)
    _zero_grads(base)
    token_terms(_rechunk(base, 2), top, forward_kl, temperature=TEMPERATURE)[1].backward()
    got = _grads(base)
    _zero_grads(base)
    q_all = torch.log_softmax((base.hidden @ base.head.T + base.head_bias) / TEMPERATURE, -1)
    p_all = torch.log_softmax(_dense_teacher_logits(teacher) / TEMPERATURE, -1)
    ids = p_all.topk(k, -1).indices
    keep = torch.zeros(N, V, dtype=torch.bool).scatter(-1, ids, True)
    p_bins = torch.cat([p_all.gather(-1, ids), torch.logsumexp(p_all.masked_fill(keep, -math.inf), -1, keepdim=True)], -1)
    q_bins = torch.cat([q_all.gather(-1, ids), torch.logsumexp(q_all.masked_fill(keep, -math.inf), -1, keepdim=True)], -1)
    (p_bins.exp() * (p_bins - q_bins)).sum(-1).mean().backward()
    for g, r, what in zip(got, _grads(base), ("hidden", "head", "bias")):
        assert r.abs().max() > 1e-4
        assert (g - r).abs().max() <= GRAD_TOL, (what, (g - r).abs().max().item())


# --- 5. renormalised top-k --------------------------------------------------------------------------

def test_renormalising_top_k_as_a_full_distribution_is_wrong():
    """Renormalising the teacher's top-k log-probs over the k tokens (and the student's over the same k)
    is not the divergence of the distributions: with teacher top-k mass ≈ 0.6 and a student that puts too
    little mass on those k tokens, it is far further from the dense forward KL than the k + 1 bin value;
    it is blind to how much mass the student puts outside the k tokens."""
    k = 3
    noise = _randn(90, N, V, scale=0.3)
    teacher_logits = noise.clone()
    for i in range(N):  # k tokens (a different set per token) lifted so that they hold about 0.6 of the mass
        for j in range(k):
            teacher_logits[i, (2 * i + j) % V] += math.log(4.0)
    # the student shares the teacher's shape up to small noise but is under-confident on the top-k set
    # (about 0.25 of its mass there instead of 0.6): the usual error of a student, and the one that matters
    student_logits = teacher_logits + _randn(91, N, V, scale=0.3)
    for i in range(N):
        for j in range(k):
            student_logits[i, (2 * i + j) % V] -= 1.5
    zt, zs = teacher_logits.tolist(), student_logits.tolist()

    naive = dense = binned = 0.0
    for i in range(N):
        p, q = loop_softmax(zt[i]), loop_softmax(zs[i])
        order = sorted(range(V), key=lambda v: -p[v])[:k]
        mass = sum(p[v] for v in order)
        assert 0.5 < mass < 0.7, mass
        p_hat = [p[v] / mass for v in order]  # the naive reading: top-k renormalised, student likewise
        q_mass = sum(q[v] for v in order)
        q_hat = [q[v] / q_mass for v in order]
        naive += loop_kl(p_hat, q_hat) / N
        dense += loop_kl(p, q) / N
        binned += loop_kl(*loop_top_k_bins(p, q, k)) / N

    top = top_k_of(teacher_logits, k=k)
    student = TokenStates(student_logits.clone().requires_grad_(True), torch.eye(V, dtype=F64), _labels(92))
    _, got = token_terms(student, top, forward_kl)
    _assert_values(got, binned, VALUE_TOL, "top-k forward KL (k + 1 bins)")
    assert binned <= dense
    assert abs(naive - dense) > 5 * abs(binned - dense) and abs(naive - dense) > 0.2, (naive, binned, dense)

    # tail_logmass is log(1 − Σ top-k probabilities), computed explicitly
    for i in range(N):
        p = loop_softmax(zt[i])
        top_mass = sum(sorted(p, reverse=True)[:k])
        assert abs(top.tail_logmass[i].item() - math.log(1.0 - top_mass)) <= VALUE_TOL
        assert sorted(top.ids[i].tolist()) == sorted(sorted(range(V), key=lambda v: -p[v])[:k])

    # blindness: a student with the teacher's top-k ratios but 0.99 of its mass on them scores 0 the naive
    # way, while its real (and k + 1 bin) divergence is large
    p = loop_softmax(zt[0])
    order = sorted(range(V), key=lambda v: -p[v])[:k]
    mass = sum(p[v] for v in order)
    q = [0.99 * p[v] / mass if v in order else 0.01 / (V - k) for v in range(V)]
    q_mass = sum(q[v] for v in order)
    assert loop_kl([p[v] / mass for v in order], [q[v] / q_mass for v in order]) < 1e-12
    assert loop_kl(*loop_top_k_bins(p, q, k)) > 0.5 and loop_kl(p, q) > 0.5


# --- 6. the methods -------------------------------------------------------------------------------

METHODS = [("forward_kl", {}, "forward_kl", None), ("reverse_kl", {}, "reverse_kl", None),
           ("jsd", {"beta": 0.3}, "jsd", 0.3), ("jsd", {"beta": 0.0}, "jsd", 0.0), ("jsd", {"beta": 1.0}, "jsd", 1.0),
           ("skew_kl", {"skew": 0.1}, "skew_kl", 0.1), ("skew_reverse_kl", {"skew": 0.4}, "skew_reverse_kl", 0.4),
           ("tv", {}, "tv", None)]
METHOD_IDS = [f"{m[0]}{m[1]}" for m in METHODS]


@pytest.mark.parametrize("t_squared", [True, False])
@pytest.mark.parametrize("method_name,extra,name,param", METHODS, ids=METHOD_IDS)
def test_method_terms_match_loop(method_name, extra, name, param, t_squared):
    """{"ce": alpha·CE, name: (1 − alpha)·T²·divergence} (no T² with t_squared false), against the loop."""
    alpha, temperature = 0.3, 2.0
    method = build_method(method_name, {"alpha": alpha, "temperature": temperature, "t_squared": t_squared, **extra})
    assert method.needs_teacher
    student, teacher = _student(chunk=3), _teacher()
    terms = method(None, student, teacher)
    assert set(terms) == {"ce", method_name}
    zs, zt = _student_logits(student), _teacher_logits(teacher)
    scale = temperature**2 if t_squared else 1.0
    _assert_values(terms["ce"], alpha * loop_ce(zs, student.labels.tolist()), VALUE_TOL, "ce term")
    _assert_values(terms[method_name], (1 - alpha) * scale * loop_mean_divergence(name, param, zs, zt, temperature),
                   VALUE_TOL, f"{method_name} term")


def test_method_with_top_k_teacher_matches_loop():
    """A token method on a TopK teacher (built at the method's temperature) scores the k + 1 bins."""
    method = build_method("forward_kl", {"alpha": 0.3, "temperature": 2.0})
    student, teacher = _student(chunk=3), _teacher()
    top = top_k_of(_dense_teacher_logits(teacher), k=4, temperature=2.0)
    terms = method(None, student, top)
    expected = 0.7 * 4.0 * loop_mean_top_k_divergence("forward_kl", None, _student_logits(student),
                                                      _teacher_logits(teacher), 2.0, 4)
    _assert_values(terms["forward_kl"], expected, VALUE_TOL, "forward_kl term, top-4 teacher")


def test_method_alpha_ends():
    """alpha 1 is the CE alone (no teacher needed, none read); alpha 0 is the divergence alone."""
    student, teacher = _student(chunk=3), _teacher()
    zs = _student_logits(student)
    only_ce = build_method("forward_kl", {"alpha": 1.0, "temperature": 2.0})
    assert only_ce.needs_teacher is False
    terms = only_ce(None, student, None)
    assert set(terms) == {"ce"}
    _assert_values(terms["ce"], loop_ce(zs, student.labels.tolist()), VALUE_TOL, "alpha 1")
    only_kl = build_method("reverse_kl", {"alpha": 0.0, "temperature": 2.0})
    terms = only_kl(None, student, teacher)
    assert set(terms) == {"reverse_kl"}
    _assert_values(terms["reverse_kl"], 4.0 * loop_mean_divergence("reverse_kl", None, zs, _teacher_logits(teacher), 2.0),
                   VALUE_TOL, "alpha 0")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_method_on_token_states(smoothing):
    """build_method("ce") on TokenStates is {"ce": next-token CE} (with its label smoothing)."""
    student = _student(chunk=2)
    terms = build_method("ce", {"label_smoothing": smoothing} if smoothing else {})(None, student, None)
    assert set(terms) == {"ce"}
    _assert_values(terms["ce"], loop_ce(_student_logits(student), student.labels.tolist(), smoothing), VALUE_TOL, "ce")


def test_token_methods_run_on_causal_lm_and_kd_does_not():
    """check_task accepts the token methods (and ce) on causal-lm and rejects the logit method kd."""
    for method_name, extra, _, _ in METHODS:
        check_task(build_method(method_name, extra), "causal-lm")
    check_task(build_method("ce", {}), "causal-lm")
    with pytest.raises(KdistillError, match="causal-lm"):
        check_task(build_method("kd", {}), "causal-lm")
    with pytest.raises(KdistillError):
        check_task(build_method("forward_kl", {}), "vision")


@pytest.mark.parametrize("raw", [{"alpha": 1.5}, {"temperature": 0.0}, {"beta": 0.5}, {"skew": 0.1}])
def test_forward_kl_rejects_bad_or_foreign_parameters(raw):
    with pytest.raises(KdistillError):
        build_method("forward_kl", raw)


# --- 7. gradient scale ------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_forward_kl_gradient_is_t_times_q_minus_p_over_n(temperature):
    """d[(1 − alpha)·T²·KL]/d logits = (1 − alpha)·T·(q_T − p_T)/N per token (logits as hidden states,
    head = identity, so hidden.grad is the logit gradient)."""
    alpha = 0.3
    student_logits, teacher_logits = _randn(110, N, V, scale=2.0), _randn(111, N, V, scale=2.0)
    hidden = student_logits.clone().requires_grad_(True)
    student = TokenStates(hidden, torch.eye(V, dtype=F64), _labels(112), chunk=3)
    teacher = TeacherHidden(teacher_logits, torch.eye(V, dtype=F64))
    terms = build_method("forward_kl", {"alpha": alpha, "temperature": temperature})(None, student, teacher)
    terms["forward_kl"].backward()
    zs, zt = student_logits.tolist(), teacher_logits.tolist()
    for i in range(N):
        q, p = loop_softmax(zs[i], temperature), loop_softmax(zt[i], temperature)
        expected = [(1 - alpha) * temperature * (q[v] - p[v]) / N for v in range(V)]
        _assert_values(hidden.grad[i], expected, GRAD_TOL, f"logit gradient, token {i}")


# --- 7b. the closed-form gradient of CE and forward KL (kdistill.losses.closed_form) --------------------

def _teacher_of(kind: str, temperature: float):
    teacher = _teacher(seed=140)
    if kind == "none":
        return None
    if kind == "dense":
        return teacher
    k = {"top_3": 3, "top_V": V, "top_3_f16": 3}[kind]
    top = top_k_of(_dense_teacher_logits(teacher), k=k, temperature=temperature)
    if kind.endswith("f16"):  # a float16 cache: its k probabilities and tail no longer sum to 1 exactly
        top = type(top)(top.logprobs.half(), top.ids, top.tail_logmass.half(), temperature)
    return top


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind", ["none", "dense", "top_3", "top_V", "top_3_f16"])
def test_closed_form_values_and_gradients_equal_autograd_under_checkpointing(kind, temperature, smoothing):
    """CE and forward KL through the closed-form gradient give the autograd path's values and gradients (hidden,
    head, bias), with the two terms weighted differently so a mix-up between them would show."""
    base, teacher = _student(seed=150), _teacher_of(kind, temperature)
    results = []
    for closed_form in (True, False):
        _zero_grads(base)
        ce, kl = token_terms(_rechunk(base, 3), teacher, forward_kl, temperature=temperature,
                             label_smoothing=smoothing, closed_form=closed_form)
        (0.3 * ce + 1.7 * kl).backward()
        results.append(((ce.item(), kl.item()), _grads(base)))
    (values, grads), (reference_values, reference_grads) = results
    assert values == pytest.approx(reference_values, abs=CHUNK_TOL)
    assert (values[1] > 1e-3) == (kind != "none")
    # float16 rows: autograd takes the tail mass's exp in float32, the closed form the ratio of the masses in float64
    for g, r, what in zip(grads, reference_grads, ("hidden", "head", "bias")):
        assert r.abs().max() > 1e-3
        tolerance = 1.2e-7 * float(r.abs().max()) if kind.endswith("f16") else GRAD_TOL  # float32's epsilon, relative
        assert (g - r).abs().max() <= tolerance, (what, (g - r).abs().max().item())


@pytest.mark.parametrize("kind", ["none", "dense", "top_3", "top_V"])
def test_closed_form_gradient_passes_a_finite_difference_check(kind):
    """The closed-form backward against central finite differences of its own forward (torch.autograd.gradcheck,
    float64), for hidden states, head and bias at once; T = 2 with label smoothing."""
    from kdistill.losses.closed_form import closed_form_sums

    student, teacher = _student(seed=160), _teacher_of(kind, 2.0)
    chunk = None if teacher is None else teacher.rows(slice(0, N))

    def sums(hidden, head, bias):
        return closed_form_sums(hidden, head, bias, student.labels, chunk, 2.0, 0.1)

    assert torch.autograd.gradcheck(sums, (student.hidden, student.head, student.head_bias), eps=1e-6, atol=1e-8)


def test_closed_form_under_bf16_autocast_matches_autograd_at_bf16_precision():
    """Under bf16 autocast (train.precision bf16) the head matmul runs in bf16 on both paths: equal values, and
    gradients within bf16's resolution of each other."""
    base = _student(seed=170)
    for t in (base.hidden, base.head, base.head_bias):
        t.data = t.data.float()
    top = top_k_of(_dense_teacher_logits(_teacher()).float(), k=3)
    results = []
    for closed_form in (True, False):
        _zero_grads(base)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ce, kl = token_terms(_rechunk(base, 3), top, forward_kl, closed_form=closed_form)
        (0.5 * ce + 0.5 * kl).backward()
        results.append(((ce.item(), kl.item()), _grads(base)))
    (values, grads), (reference_values, reference_grads) = results
    assert values == pytest.approx(reference_values, rel=1e-6)
    for g, r in zip(grads, reference_grads):
        assert g.dtype == torch.float32 and (g - r).abs().max() <= 2e-2 * r.abs().max()  # bf16: 8 bits of mantissa


def test_the_forward_kl_method_takes_the_closed_form_and_the_others_autograd(monkeypatch):
    """forward_kl and ce run through the closed form; reverse KL stays on autograd (no closed form written)."""
    import kdistill.losses.tokens as tokens

    calls = {"n": 0}
    original = tokens.closed_form_sums

    def counted(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(tokens, "closed_form_sums", counted)
    student, teacher = _student(chunk=3), _teacher()
    for name, expected in (("forward_kl", 3), ("ce", 3), ("reverse_kl", 0)):
        calls["n"] = 0
        sum(build_method(name, {})(None, student, teacher).values()).backward()
        assert calls["n"] == expected, name  # N = 7 tokens in chunks of 3


# --- 8. no scored tokens ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dense", "top_k", "none"])
def test_token_terms_with_no_tokens_is_a_zero_that_backpropagates(kind):
    """Zero scored tokens: (0, 0), and backward runs (zero gradients)."""
    hidden = torch.zeros(0, D, dtype=F64, requires_grad=True)
    head = _randn(120, V, D).requires_grad_(True)
    student = TokenStates(hidden, head, torch.zeros(0, dtype=torch.long), chunk=4)
    teacher = {"dense": TeacherHidden(torch.zeros(0, D_TEACHER, dtype=F64), _randn(121, V, D_TEACHER)),
               "top_k": top_k_of(torch.zeros(0, V, dtype=F64), k=3, temperature=2.0), "none": None}[kind]
    ce, value = token_terms(student, teacher, forward_kl if teacher is not None else None, temperature=2.0)
    assert ce.item() == 0.0 and value.item() == 0.0
    (ce + value).backward()
    assert hidden.grad is not None and hidden.grad.shape == (0, D)
    assert head.grad is None or (head.grad == 0).all()
    terms = build_method("forward_kl", {"alpha": 0.5, "temperature": 2.0})(None, student, teacher)
    sum(terms.values()).backward()


def test_top_k_at_another_temperature_is_refused():
    """A top-k taken at T=1 cannot serve a loss at T=2 (the tail's mass at T=2 is unknown): refused, not guessed."""
    logits = _randn(130, N, V)
    student = TokenStates(_randn(131, N, V), torch.eye(V, dtype=F64), torch.zeros(N, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        token_terms(student, top_k_of(logits, k=3, temperature=1.0), forward_kl, temperature=2.0)
