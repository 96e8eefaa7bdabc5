"""Export a trained run for deployment: ONNX (fp32), int8 with ONNX Runtime or PyTorch, each verified.

`kdistill export RUN_DIR --format onnx [--quantize int8]` writes into `RUN_DIR/export/`:

- `model.onnx`: the fp32 graph with a dynamic batch axis (input `input`, output `logits`); a text run's
  graph takes its tokenizer's inputs (`input_ids`, `attention_mask`[, `token_type_ids`]) with dynamic
  batch and sequence axes;
- with `--quantize int8`: `model.int8-dynamic.onnx` (ONNX Runtime dynamic quantisation: int8
  weights, activations quantised on the fly) and, for image inputs, `model.int8-static.onnx`
  (static QDQ quantisation, per-channel weights, activation ranges calibrated on training samples);
- `--format torch --quantize int8`: `model.int8-dynamic.safetensors`, PyTorch dynamic int8 for the
  Linear layers (int8 weights + scales in safetensors; rebuilt from `model.json`, or the run's
  Hugging Face config, on load).

Every variant is run on real samples of the validation split and compared with the PyTorch fp32
model: max abs logit difference, argmax agreement, and both accuracies, printed and stored in
`export/export.json`. An fp32 ONNX file that does not reproduce PyTorch is an error (and is not
kept); int8 variants are kept with their measured accuracy change.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kdistill.errors import KdistillError, first_line
from kdistill.models.inference import accuracy, onnx_session
from kdistill.ownership import FILE, FOLDER, MANIFEST, TREE, Owned, pid_alive
from kdistill.training.rundir import write_owned_text
from kdistill.evaluate.report import format_size
from kdistill.evaluate.samples import Batch, BlockSamples, TensorSamples, TextSamples
from kdistill.digests import file_sha256

EXPORT_DIR = "export"
EXPORT_JSON = "export.json"
VARIANT_FILES = {
    "onnx": "model.onnx",
    "onnx-int8-dynamic": "model.int8-dynamic.onnx",
    "onnx-int8-static": "model.int8-static.onnx",
    "torch-int8-dynamic": "model.int8-dynamic.safetensors",
}
# fp32 ONNX must reproduce PyTorch: the same argmax on (nearly) every sample, logits within this
# tolerance relative to their scale (float reassociation in fused kernels moves the last bits).
FP32_MAX_REL_DIFF = 1e-3
FP32_MIN_AGREEMENT = 0.999


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise KdistillError(f"{', '.join(missing)} not installed; ONNX export needs the `export` extra: "
                            "pip install 'kdistill[export]'")


def variants_for(fmt: str, quantize: str | None, image_inputs: bool) -> list[str]:
    """Which variants `--format fmt [--quantize q]` writes (static int8 only for models of image inputs)."""
    if fmt == "onnx":
        if quantize is None:
            return ["onnx"]
        return ["onnx", "onnx-int8-dynamic"] + (["onnx-int8-static"] if image_inputs else [])
    if fmt == "torch":
        if quantize is None:
            raise KdistillError("--format torch without --quantize: the fp32 PyTorch weights already are model.safetensors; "
                                "pass --quantize int8 for PyTorch dynamic int8")
        return ["torch-int8-dynamic"]
    raise KdistillError(f"--format {fmt!r}: expected onnx or torch")


# ---------------------------------------------------------------- writing the variants

def export_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, opset: int = 18,
                input_names: list[str] | None = None, dynamic_shapes: tuple | None = None) -> None:
    """Write `model` as ONNX (the torch.export-based exporter) with output `logits`. By default one input
    `input` with a dynamic batch axis; text models name their inputs and make the sequence axis dynamic too."""
    _require("onnx", "onnxscript")
    model = model.eval()
    input_names = input_names or ["input"]
    dynamic_shapes = dynamic_shapes or tuple({0: torch.export.Dim("batch")} for _ in example)
    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and friends
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch.export's pytree handling
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # shared batch/sequence names
            torch.onnx.export(model, example, str(path), input_names=input_names, output_names=["logits"],
                              opset_version=opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # the exporter raises many types; the user needs the first line and the model
        raise KdistillError(f"ONNX export failed for this model: {first_line(exc, 300)}") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and converts upwards only


def check_opset(opset: int) -> None:
    """The opsets the exporter can write and this onnx package knows; others are a one-line error."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise KdistillError(f"--opset {opset}: kdistill exports ONNX opsets {MIN_OPSET} to {newest} (the newest this "
                            "onnx package knows)")


def written_opset(path: Path) -> int:
    """The default-domain opset the ONNX file really declares (recorded in export.json, not the one asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _onnxruntime_step(what: str, step: Callable[[], None]) -> None:
    """Run one ONNX Runtime quantisation step; its failures (many exception types) become one line."""
    try:
        step()
    except Exception as exc:
        raise KdistillError(f"{what} failed for this model: {first_line(exc, 300)}") from None


def preprocess_for_quantization(src: Path, dst: Path, symbolic_shapes: bool = True) -> None:
    """ONNX Runtime's recommended step before quantising: shape inference and graph optimisation.

    `symbolic_shapes=False` uses ONNX's own shape inference: ONNX Runtime's symbolic one gives up on
    transformer graphs with a dynamic sequence axis. It runs with the current directory set to the
    output's folder, because ONNX Runtime drops debugging files (`sym_shape_infer_temp.onnx` and its
    external data) into the current directory when its inference fails.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst, here = src.resolve(), dst.resolve(), os.getcwd()  # resolved before the chdir, not after
    os.chdir(dst.parent)
    try:
        _onnxruntime_step("ONNX Runtime pre-processing", lambda: quant_pre_process(
            str(src), str(dst), skip_symbolic_shape=not symbolic_shapes))
    finally:
        os.chdir(here)


def quantize_onnx_dynamic(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation: int8 weights; activations quantised per call from their range."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _onnxruntime_step("int8 dynamic quantisation", lambda: quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8))


def quantize_onnx_static(src: Path, dst: Path, calibration: torch.Tensor, batch_size: int = 32) -> None:
    """ONNX Runtime static QDQ quantisation: per-channel int8 weights, uint8 activations whose ranges
    (min/max) come from running `calibration` inputs through the model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + batch_size].numpy() for i in range(0, len(calibration), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    _onnxruntime_step("int8 static quantisation", lambda: quantize_static(
        str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8))


def quantize_torch_dynamic(model: nn.Module) -> nn.Module:
    """PyTorch dynamic int8 for every nn.Linear (weights int8, activations quantised per call); a copy.

    This is PyTorch's eager-mode `torch.ao.quantization.quantize_dynamic`, which PyTorch now
    deprecates in favour of torchao; its deprecation warning is silenced here.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise KdistillError(f"PyTorch {torch.__version__} no longer ships torch.ao.quantization; "
                            "use --format onnx --quantize int8") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated")  # UserWarning and DeprecationWarning alike
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


def save_torch_int8(qmodel: nn.Module, path: Path) -> None:
    """Write a `quantize_torch_dynamic` model as safetensors: int8 weights with their scales and zero points,
    biases, and every other (float) tensor of the state dict."""
    from safetensors.torch import save_file

    linears = _quantized_linears(qmodel)
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in linears.items():
        weight, bias = mod._weight_bias()
        tensors[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            tensors[f"{name}.weight.scale"] = weight.q_per_channel_scales().float()
            tensors[f"{name}.weight.zero_point"] = weight.q_per_channel_zero_points().to(torch.int64)
        else:
            tensors[f"{name}.weight.scale"] = torch.tensor([weight.q_scale()], dtype=torch.float32)
            tensors[f"{name}.weight.zero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
    prefixes = tuple(f"{name}." for name in linears)
    for key, value in qmodel.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.startswith(prefixes) and not value.is_quantized:
            tensors[key] = value.detach().contiguous()
    save_file(tensors, str(path), metadata={"format": "kdistill-torch-int8-dynamic"})


def load_torch_int8(model: nn.Module, path: Path) -> nn.Module:
    """Rebuild a PyTorch dynamic-int8 model from the fp32 architecture `model` and a `save_torch_int8` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise KdistillError(f"{path}: corrupt int8 weights ({exc}); export again") from None
    float_model = copy.deepcopy(model)
    linear_names = [name for name, m in float_model.named_modules() if isinstance(m, nn.Linear)]
    linear_keys = {f"{name}.{p}" for name in linear_names for p in ("weight", "bias")}
    # The float tensors (convolutions, norms, ...) go into the fp32 model, then the Linear layers are quantised
    # and given the stored int8 weights.
    result = float_model.load_state_dict({k: v for k, v in tensors.items() if k in float_model.state_dict()}, strict=False)
    absent = [k for k in result.missing_keys if k not in linear_keys]
    stored = {k.rsplit(".weight.", 1)[0] for k in tensors if ".weight.int8" in k}
    if absent or stored != set(linear_names):
        what = f"missing {absent[0]}" if absent else f"int8 layers {sorted(stored)[:3]} vs the model's {linear_names[:3]}"
        raise KdistillError(f"{path}: int8 weights do not fit the architecture in model.json ({what}); export again")
    qmodel = quantize_torch_dynamic(float_model)
    for name, mod in _quantized_linears(qmodel).items():
        ints, scale, zero = (tensors[f"{name}.weight.{k}"] for k in ("int8", "scale", "zero_point"))
        if scale.numel() == 1:
            weight = torch._make_per_tensor_quantized_tensor(ints, float(scale), int(zero))
        else:
            weight = torch._make_per_channel_quantized_tensor(ints, scale.double(), zero, 0)
        mod.set_weight_bias(weight, tensors.get(f"{name}.bias"))
    return qmodel.eval()


# ---------------------------------------------------------------- running the variants

@dataclass
class Predictor:
    """One deployable form of a model: a callable from an input batch (a tensor, or a tokenizer's dict of
    tensors) to logits (float32, CPU)."""

    name: str
    variant: str
    path: Path
    run: Callable[[Batch], torch.Tensor]

    def __call__(self, inputs: Batch) -> torch.Tensor:
        return self.run(inputs)

    def predict(self, samples: TensorSamples | TextSamples | BlockSamples) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self.run(batch) for batch in samples.batches()])

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def onnx_runner(path: Path, threads: int | None = None) -> Callable[[Batch], torch.Tensor]:
    session = onnx_session(path, threads)
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Batch) -> torch.Tensor:
        feed = {n: inputs[n].numpy() for n in names} if isinstance(inputs, Mapping) else {names[0]: inputs.numpy()}
        return torch.from_numpy(session.run(None, feed)[0]).float()

    return run


def torch_runner(model: nn.Module) -> Callable[[Batch], torch.Tensor]:
    """Logits of `model` (an image classifier, or a Hugging Face one called with keyword inputs)."""
    model.eval()

    def run(inputs: Batch) -> torch.Tensor:
        with torch.inference_mode():
            out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
            return getattr(out, "logits", out).float()

    return run


def load_predictor(run_dir: Path, variant: str, model: nn.Module, threads: int | None = None) -> Predictor:
    """The predictor for one exported `variant` of the run (`model` is its fp32 PyTorch model)."""
    path = Path(run_dir) / EXPORT_DIR / VARIANT_FILES[variant]
    if not path.is_file():
        raise KdistillError(f"{path} is missing; run `kdistill export {run_dir}` again")
    if variant == "torch-int8-dynamic":
        return Predictor(Path(run_dir).name, variant, path, torch_runner(load_torch_int8(model, path)))
    return Predictor(Path(run_dir).name, variant, path, onnx_runner(path, threads))


# ---------------------------------------------------------------- verification and the export record

def verify(reference: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, split: str) -> dict[str, Any]:
    """How closely `logits` reproduce the fp32 PyTorch `reference` on the same samples."""
    return {
        "split": split,
        "samples": int(labels.shape[0]),
        "max_abs_diff": float((logits - reference).abs().max()),
        "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        "accuracy": accuracy(logits, labels),
        "reference_accuracy": accuracy(reference, labels),
    }


def read_export_record(run_dir: Path) -> dict[str, Any]:
    """`export/export.json` of a run ({} when it has none); a corrupt file is an error."""
    path = Path(run_dir) / EXPORT_DIR / EXPORT_JSON
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("variants"), dict):
            raise ValueError("no variants mapping")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise KdistillError(f"{path}: corrupt export record ({exc}); delete {path.parent} and export again") from None
    return record


@dataclass
class ExportSource:
    """What `export_run` needs from a finished run, whatever its modality."""

    model: nn.Module  # fp32, eval mode; called like torch_runner calls it
    onnx_model: nn.Module  # the same model with positional inputs and a logits output, for the ONNX exporter
    val: TensorSamples | TextSamples | BlockSamples  # verification samples
    example: tuple[torch.Tensor, ...]  # example inputs for the exporter
    input_names: list[str]
    dynamic_shapes: tuple
    image_inputs: bool  # static int8 (calibrated activations) is offered for image models
    calibration: torch.Tensor | None  # training inputs to calibrate static int8 from
    record: dict[str, Any]  # dataset, classes, input description for export.json
    symbolic_shapes: bool = True  # ONNX Runtime's symbolic shape inference before quantising (not for transformers)
    accuracy_name: str = "accuracy"  # what `accuracy` of `val` measures, in the log lines


def check_export_request(fmt: str, quantize: str | None, opset: int) -> None:
    """What can be refused before any run is loaded: the quantisation, the ONNX packages and the opset."""
    if quantize not in (None, "int8"):
        raise KdistillError(f"--quantize {quantize!r}: only int8 is supported")
    if fmt == "onnx":
        _require("onnx", "onnxscript", "onnxruntime")
        check_opset(opset)


def export_run(run_dir: str | Path, source: ExportSource, *, fmt: str = "onnx", quantize: str | None = None,
               calibration: int = 256, verify_split: str = "val", opset: int = 18, overwrite: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """`kdistill export`: write the variants `fmt`/`quantize` ask for of the run `source` was opened from (by its
    task, kdistill.tasks.export), verify each on `source.val`, update export.json; returns it."""
    check_export_request(fmt, quantize, opset)
    run_dir = Path(run_dir)
    wanted = variants_for(fmt, quantize, source.image_inputs)
    out = run_dir / EXPORT_DIR
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise KdistillError(f"{out} exists and is not a directory; move it away and export again")
    record = read_export_record(run_dir)
    weights_sha = file_sha256(run_dir / "model.safetensors")
    existing = [v for v in wanted if (out / VARIANT_FILES[v]).exists()]
    if existing and not overwrite:
        raise KdistillError(f"{out} already holds {', '.join(VARIANT_FILES[v] for v in existing)}; "
                            "pass --overwrite to export again")

    model = source.model
    reference = Predictor(run_dir.name, "pytorch", run_dir / "model.safetensors", torch_runner(model)).predict(source.val)
    labels = source.val.labels
    owned = Owned(out)
    foreign = set(owned.foreign()) if out.is_dir() else set()
    clash = [name for name in [VARIANT_FILES[v] for v in existing] + [EXPORT_JSON] if name in foreign]
    if clash:  # never replace a file kdistill did not write (a user's, or an export of a kdistill without manifests)
        raise KdistillError(f"{out} holds {', '.join(clash)}, which kdistill did not write (not in its {MANIFEST}); "
                            "move it away and export again")
    Owned(run_dir).claim(EXPORT_DIR, kind=FOLDER)
    for stale in [name for name, kind in (owned.entries() or {}).items() if name.startswith(".work-") and kind == TREE]:
        pid = stale.removeprefix(".work-")
        if not (pid.isdigit() and pid_alive(int(pid))):  # left by an export that was killed
            shutil.rmtree(out / stale, ignore_errors=True)
            owned.release(stale)
    work = owned.path(f".work-{os.getpid()}", kind=TREE)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        results: dict[str, dict[str, Any]] = {}
        fp32_onnx = work / VARIANT_FILES["onnx"]
        prepared = work / "model.prepared.onnx"  # the input of ONNX Runtime's quantisers
        for variant in wanted:
            t0 = time.perf_counter()
            path = work / VARIANT_FILES[variant]
            info: dict[str, Any] = {"file": VARIANT_FILES[variant]}
            if variant == "onnx":
                export_onnx(source.onnx_model, source.example, path, opset, source.input_names, source.dynamic_shapes)
                written = written_opset(path)
                if written != opset:
                    raise KdistillError(f"--opset {opset}: the exporter wrote opset {written} instead; nothing was written")
                info |= {"format": "onnx", "precision": "fp32", "opset": written, "inputs": source.input_names}
            elif variant == "onnx-int8-dynamic":
                if not prepared.exists():
                    preprocess_for_quantization(fp32_onnx, prepared, source.symbolic_shapes)
                quantize_onnx_dynamic(prepared, path)
                info |= {"format": "onnx", "precision": "int8", "quantization": "onnxruntime dynamic, int8 weights"}
            elif variant == "onnx-int8-static":
                assert source.calibration is not None
                generator = torch.Generator().manual_seed(0)
                n = min(calibration, len(source.calibration))
                picks = torch.randperm(len(source.calibration), generator=generator)[:n]
                if not prepared.exists():
                    preprocess_for_quantization(fp32_onnx, prepared, source.symbolic_shapes)
                quantize_onnx_static(prepared, path, source.calibration[picks].contiguous())
                info |= {"format": "onnx", "precision": "int8", "calibration_samples": n,
                         "quantization": "onnxruntime static QDQ, per-channel int8 weights, uint8 activations, min-max "
                                         "ranges from training samples"}
            else:
                save_torch_int8(quantize_torch_dynamic(model), path)
                info |= {"format": "safetensors", "precision": "int8", "quantization": "pytorch dynamic int8, nn.Linear"}
            runner = (torch_runner(load_torch_int8(model, path)) if variant == "torch-int8-dynamic"
                      else onnx_runner(path))
            logits = Predictor(run_dir.name, variant, path, runner).predict(source.val)
            info["verify"] = check = verify(reference, logits, labels, verify_split)
            info |= {"size_bytes": path.stat().st_size, "sha256": file_sha256(path), "seconds": time.perf_counter() - t0}
            if variant == "onnx":
                scale = max(1.0, float(reference.abs().max()))
                if check["max_abs_diff"] > FP32_MAX_REL_DIFF * scale or check["argmax_agreement"] < FP32_MIN_AGREEMENT:
                    raise KdistillError(f"the ONNX export does not reproduce PyTorch on {verify_split}: max abs logit "
                                        f"difference {check['max_abs_diff']:.3g}, argmax agreement "
                                        f"{100 * check['argmax_agreement']:.2f}%; nothing was written")
            results[variant] = info
            log(f"{VARIANT_FILES[variant]}: {format_size(info['size_bytes'])}, {verify_split} {source.accuracy_name} "
                f"{100 * check['accuracy']:.2f}% (PyTorch fp32 {100 * check['reference_accuracy']:.2f}%), "
                f"argmax agreement {100 * check['argmax_agreement']:.2f}%, max abs logit diff {check['max_abs_diff']:.2e}")
        for variant in wanted:
            (work / VARIANT_FILES[variant]).replace(owned.path(VARIANT_FILES[variant]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        owned.release(work.name)

    if record.get("weights_sha256") not in (None, weights_sha):  # the run was retrained: older variants are stale
        stale = [v for v in record["variants"] if v not in results]
        for variant in stale:
            name = VARIANT_FILES.get(variant)
            if name and (owned.entries() or {}).get(name) == FILE:  # only what kdistill wrote
                (out / name).unlink(missing_ok=True)
        record["variants"] = {}
    record = {"run": str(run_dir), "weights_sha256": weights_sha, **source.record,
              "torch": torch.__version__, "variants": {**record.get("variants", {}), **results}}
    write_owned_text(out, EXPORT_JSON, json.dumps(record, indent=2) + "\n")
    return record
