"""Text feature methods (TinyBERT, MiniLM): their losses against explicit loops, the encoder layout they hook,
and the methods on two tiny BERTs against the losses computed by hand from the models' own outputs."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.data.splits import Batch
from kdistill.errors import KdistillError
from kdistill.losses.transformer import attention_score_mse, masked_mse, relation_kl
from kdistill.methods import build
from kdistill.methods.transformer import uniform_layer_map
from kdistill.methods.taps import transformer_layout

transformers = pytest.importorskip("transformers")


def _mask() -> torch.Tensor:
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _loop_mse(s, t, mask):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                for d in range(s.shape[2]):
                    total = total + (s[b, i, d] - t[b, i, d]) ** 2
                    count += 1
    return total / count


def _loop_scores(q, k, heads, b, h):
    dh = q.shape[-1] // heads
    qh, kh = q[b, :, h * dh:(h + 1) * dh], k[b, :, h * dh:(h + 1) * dh]
    return [[float(sum(qh[i, d] * kh[j, d] for d in range(dh))) / math.sqrt(dh) for j in range(q.shape[1])]
            for i in range(q.shape[1])]


def test_masked_mse_is_the_mean_over_real_tokens():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    assert float(masked_mse(s, t, _mask())) == pytest.approx(float(_loop_mse(s, t, _mask())), rel=1e-6)
    t[1, 3:] += 100.0  # padded tokens add nothing
    assert float(masked_mse(s, t, _mask())) == pytest.approx(float(_loop_mse(s, t, _mask())), rel=1e-6)


def test_attention_score_mse_against_a_loop_over_heads_and_token_pairs():
    torch.manual_seed(1)
    heads, mask = 2, _mask()
    sq, sk, tq, tk = (torch.randn(2, 5, 4) for _ in range(4))
    total, count = 0.0, 0
    for b in range(2):
        for h in range(heads):
            a_s, a_t = _loop_scores(sq, sk, heads, b, h), _loop_scores(tq, tk, heads, b, h)
            for i in range(5):
                for j in range(5):
                    if mask[b, i] and mask[b, j]:
                        total += (a_s[i][j] - a_t[i][j]) ** 2
                        count += 1
    # the mean over heads of each head's mean over the real pairs (every head has the same pairs)
    assert float(attention_score_mse(sq, sk, tq, tk, mask, heads)) == pytest.approx(total / count, rel=1e-5)


def _loop_relation_kl(sa, sb, ta, tb, mask, heads):
    total, queries = 0.0, 0
    for b in range(sa.shape[0]):
        real = [j for j in range(sa.shape[1]) if mask[b, j]]
        for h in range(heads):
            s_scores, t_scores = _loop_scores(sa, sb, heads, b, h), _loop_scores(ta, tb, heads, b, h)
            for i in real:
                s_row = torch.softmax(torch.tensor([s_scores[i][j] for j in real], dtype=torch.float64), 0)
                t_row = torch.softmax(torch.tensor([t_scores[i][j] for j in real], dtype=torch.float64), 0)
                total += float((t_row * (t_row.log() - s_row.log())).sum())
                queries += 1
    return total / queries


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_relation_kl_against_a_loop_over_heads_queries_and_real_keys(heads):
    torch.manual_seed(2)
    mask = _mask()
    sa, sb, ta, tb = (torch.randn(2, 5, 8) for _ in range(4))
    expected = _loop_relation_kl(sa, sb, ta, tb, mask, heads)
    assert float(relation_kl(sa, sb, ta, tb, mask, heads)) == pytest.approx(expected, rel=1e-5)
    assert float(relation_kl(ta, tb, ta, tb, mask, heads)) == pytest.approx(0.0, abs=1e-6)  # KL(p ‖ p) = 0
    # different widths (8 and 16) with relation heads dividing both
    wide_a, wide_b = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert float(relation_kl(sa, sb, wide_a, wide_b, mask, heads)) == pytest.approx(
        _loop_relation_kl(sa, sb, wide_a, wide_b, mask, heads), rel=1e-5)


def test_relation_kl_gradient_matches_the_closed_form_and_padding_gets_none():
    """d KL(p_t ‖ softmax(z)) / dz = (p_s − p_t) / (heads · real queries), per row of scores z; padded keys get
    no gradient and the gradient is finite."""
    torch.manual_seed(3)
    mask = _mask()
    sq = torch.randn(2, 5, 4, requires_grad=True)
    sk, tq, tk = (torch.randn(2, 5, 4) for _ in range(3))
    relation_kl(sq, sk, tq, tk, mask, 1).backward()
    assert torch.isfinite(sq.grad).all()
    assert torch.equal(sq.grad[1, 3:], torch.zeros(2, 4))  # padded queries
    # closed form for heads = 1: dL/dq_i = Σ_j (p_s − p_t)_ij k_j / sqrt(d) / (real queries)
    queries = int(mask.sum())
    expected = torch.zeros_like(sq)
    for b in range(2):
        real = mask[b].bool()
        s = (sq[b].detach() @ sk[b].T / 2.0)[:, real].softmax(-1)
        t = (tq[b] @ tk[b].T / 2.0)[:, real].softmax(-1)
        expected[b] = ((s - t) @ sk[b][real]) / 2.0 / queries * mask[b, :, None]
    assert torch.allclose(sq.grad, expected, atol=1e-6)


def test_uniform_layer_map_is_tinyberts():
    assert uniform_layer_map(2, 4) == [1, 3]
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
    assert uniform_layer_map(3, 3) == [0, 1, 2]


def _bert(hidden=32, layers=4, heads=2, seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def test_transformer_layout_of_bert_and_distilbert():
    layout = transformer_layout(_bert(layers=3), "t")
    assert layout.layers == [f"bert.encoder.layer.{i}" for i in range(3)] and layout.embeddings == "bert.embeddings"
    assert layout.query[2] == "bert.encoder.layer.2.attention.self.query" and layout.heads == 2 and layout.hidden_size == 32
    distil = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=60, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32))
    layout = transformer_layout(distil, "t")
    assert layout.layers == ["distilbert.transformer.layer.0", "distilbert.transformer.layer.1"]
    assert layout.value[1].endswith("layer.1.attention.v_lin") and layout.heads == 4
    with pytest.raises(KdistillError, match="not a transformer encoder"):
        transformer_layout(torch.nn.Linear(2, 2), "t")


def _inputs():
    ids = torch.randint(5, 60, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids, mask


def test_tinybert_terms_equal_the_losses_of_the_models_own_hidden_states():
    teacher, student = _bert(hidden=32, layers=4, seed=0).eval(), _bert(hidden=16, layers=2, seed=1)
    method = build("tinybert", weight=1.0, attention_weight=0.5, ce_weight=0.0)
    method.bind(student, teacher)
    assert isinstance(method.projection, torch.nn.Linear) and method.projection.in_features == 16
    ids, mask = _inputs()
    s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    with torch.inference_mode():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    terms = method(Batch(ids, torch.tensor([0, 1]), torch.arange(2), attention_mask=mask), s_out.logits, t_out.logits)
    # hidden_states[0] is the embeddings' output; student layer m <-> teacher layer 2m + 1 (0-based): states 2, 4
    expected = sum(masked_mse(method.projection(s_out.hidden_states[i]), t_out.hidden_states[j].clone(), mask)
                   for i, j in ((0, 0), (1, 2), (2, 4)))
    assert float(terms["hidden"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert set(terms) == {"hidden", "attention"} and float(terms["attention"].detach()) > 0
    sum(terms.values()).backward()
    assert method.projection.weight.grad is not None and all(p.grad is None for p in teacher.parameters())
    method.unbind()
    with pytest.raises(KdistillError, match="attention transfer compares head by head"):
        build("tinybert").bind(_bert(hidden=32, heads=4), teacher)


def test_minilm_terms_equal_the_relation_kls_of_the_last_layers_projections():
    teacher, student = _bert(hidden=32, layers=4, heads=2, seed=0).eval(), _bert(hidden=16, layers=2, heads=2, seed=1)
    method = build("minilm", ce_weight=0.0, value_weight=2.0)
    method.bind(student, teacher)
    ids, mask = _inputs()
    captured = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, key=key: captured.__setitem__(key, o.detach().clone()))
             for key, m in (("sq", student.bert.encoder.layer[1].attention.self.query),
                            ("sk", student.bert.encoder.layer[1].attention.self.key),
                            ("sv", student.bert.encoder.layer[1].attention.self.value),
                            ("tq", teacher.bert.encoder.layer[3].attention.self.query),
                            ("tk", teacher.bert.encoder.layer[3].attention.self.key),
                            ("tv", teacher.bert.encoder.layer[3].attention.self.value))]
    s_logits = student(input_ids=ids, attention_mask=mask).logits
    with torch.inference_mode():
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits
    for hook in hooks:
        hook.remove()
    terms = method(Batch(ids, torch.tensor([0, 1]), torch.arange(2), attention_mask=mask), s_logits, t_logits)
    c = captured
    assert float(terms["attention"].detach()) == pytest.approx(_loop_relation_kl(c["sq"], c["sk"], c["tq"], c["tk"], mask, 2), rel=1e-4)
    assert float(terms["value_relation"].detach()) == pytest.approx(
        2.0 * _loop_relation_kl(c["sv"], c["sv"], c["tv"], c["tv"], mask, 2), rel=1e-4)
    assert not list(method.parameters())  # no connector: nothing to train beside the student
    with pytest.raises(KdistillError, match="set relation_heads"):
        build("minilm").bind(_bert(hidden=32, heads=4), teacher)
    build("minilm", relation_heads=4).bind(_bert(hidden=32, heads=4), teacher)  # MiniLMv2's relation heads


def test_text_feature_methods_refuse_vision_tasks():
    from kdistill.methods import check_task

    with pytest.raises(KdistillError, match="runs on text tasks only"):
        check_task(build("tinybert"), "vision")
