"""`kdistill sweep CONFIG --trials N`: search distillation hyperparameters with Optuna.

Each trial is a full `kdistill distill` run of the config with sampled values, in
`<sweep dir>/trial-NNN`, for every task (image and text classifiers, causal LMs). The objective is
the best validation score over the run's epochs: accuracy for classifiers, the lowest perplexity for
causal LMs (the test split is reported, never used to choose). After every epoch the trial reports
its validation score, and a median pruner stops trials that fall behind the median of earlier
trials at the same epoch. The study lives in `<sweep dir>/study.db` (SQLite), so running the
same command again continues the sweep: finished and pruned trials are kept, a trial that was
running when the sweep was killed is retried with the same values.

The search space (`sweep.space` in the config, keys are dotted config paths):

    sweep:
      space:
        distill.temperature: {low: 1.0, high: 20.0, log: true}   # default
        distill.alpha: {low: 0.0, high: 1.0}                     # default
        distill.method: [kd, dkd, dist]                          # a list: one of these
        distill.dkd.beta: {low: 1.0, high: 16.0}                 # only when the method is dkd
        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}         # any other config key

`distill.X` (X a hyperparameter) is searched only for methods that have X (DIST has no alpha);
`distill.M.X` only when the method is M. Writes `trials.md`, `trials.json` and `best.yaml`
(the config with the best trial's values, ready for `kdistill distill`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from kdistill.config import SweepConfig, apply_overrides, format_validation_error, read_yaml, validate_config
from kdistill.errors import KdistillError, NonFiniteError
from kdistill.training.rundir import write_text_atomic
from kdistill.ownership import FOLDER, MANIFEST, Owned, pid_alive

STUDY = "kdistill-sweep"
# What a sweep writes at the top of its folder (recorded in its manifest, kdistill.ownership), besides trial-NNN runs.
OUTPUTS = ("study.db", "study.db-journal", "study.db-wal", "study.db-shm", "sweep.lock", "trials.md", "trials.json",
           "best.yaml")


def _method_fields(method: str) -> set[str]:
    from kdistill.methods import METHODS

    cls = METHODS.get(method)
    if cls is None:
        raise KdistillError(f"sweep.space: unknown method {method!r} (known: {', '.join(sorted(METHODS))})")
    return set(cls.Params.model_fields)


def _suggest(trial: Any, name: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if spec.get("type") == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1), log=bool(spec.get("log")))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=bool(spec.get("log")))


@dataclass(frozen=True)
class Objective:
    """What a sweep of one task's configs optimises: the epoch record's validation key, the report row's test
    key, and their direction (from kdistill.tasks)."""

    val_key: str
    test_key: str
    maximize: bool

    @classmethod
    def of(cls, task: Any) -> "Objective":
        return cls(task.validation_key, task.score_key, task.higher_is_better)

    @property
    def test_name(self) -> str:  # "test_accuracy", "test_perplexity": the trials' columns
        return "test_" + self.test_key

    @property
    def name(self) -> str:  # "validation accuracy", "validation perplexity"
        return "validation " + self.val_key.removeprefix("val_")

    def best(self, values: list[float]) -> float:
        return max(values) if self.maximize else min(values)

    def show(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}%" if "accuracy" in self.val_key else f"{value:.3f}"


def _distill_settings(config_model: type) -> type:
    """The model of a run config's `distill` section (vision, text and causal-LM runs each have their own)."""
    return config_model.model_fields["distill"].annotation


def sample_overrides(trial: Any, space: dict[str, Any], fixed_method: str, settings: type) -> dict[str, Any]:
    """The dotted overrides of one trial (define-by-run: a method's parameters only when it is chosen);
    `settings` is the task's `distill` section model."""
    from kdistill.methods import METHODS

    values: dict[str, Any] = {}
    method = fixed_method
    if "distill.method" in space:
        method = _suggest(trial, "distill.method", space["distill.method"])
        values["distill.method"] = method
    fields = _method_fields(method)
    for key, spec in space.items():
        if key == "distill.method":
            continue
        parts = key.split(".")
        if parts[0] == "distill" and len(parts) == 2 and parts[1] not in METHODS:
            if parts[1] in fields:  # named per method: each keeps its own distribution (alpha means different things)
                values[key] = _suggest(trial, f"{method}.{parts[1]}", spec)
            elif parts[1] in settings.model_fields:  # teacher_outputs, teacher_precision, ...
                values[key] = _suggest(trial, key, spec)
        elif parts[0] == "distill" and len(parts) >= 3 and parts[1] in METHODS:
            if parts[1] == method:
                values[key] = _suggest(trial, key, spec)
        else:
            values[key] = _suggest(trial, key, spec)
    return values


def _check_distill_keys(space: dict[str, Any], settings: type) -> None:
    """`distill.X` must be a setting of some method (or of `distill` itself): a typo would otherwise never be sampled."""
    from kdistill.methods import METHODS

    known = set(settings.model_fields) | {f for cls in METHODS.values() for f in cls.Params.model_fields}
    for key in space:
        parts = key.split(".")
        if parts[0] != "distill" or key == "distill.method":
            continue
        if len(parts) == 2 and parts[1] not in known and parts[1] not in METHODS:
            raise KdistillError(f"sweep.space: {key} is not a setting of any method (e.g. distill.temperature, distill.alpha)")
        if len(parts) >= 3 and parts[1] in METHODS and parts[2] not in _method_fields(parts[1]):
            raise KdistillError(f"sweep.space: {key}: method {parts[1]!r} has no setting {parts[2]!r} "
                                f"(it has: {', '.join(sorted(_method_fields(parts[1])))})")


def _settings_into_section(raw: dict[str, Any], method: str, settings: type) -> dict[str, Any]:
    """Move the config's top-level method settings (`distill.alpha: 0.5`) into its method's own section
    (`distill.kd: {alpha: 0.5}`), so that a trial of another method does not receive them."""
    from kdistill.methods import METHODS

    raw = copy.deepcopy(raw)
    distill = raw.setdefault("distill", {})
    moved = {k: distill.pop(k) for k in list(distill) if k not in settings.model_fields and k not in METHODS}
    if moved:
        distill[method] = {**moved, **(distill.get(method) or {})}
    return raw


def _to_override_list(values: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _lock(directory: Path) -> Path:
    lock = directory / "sweep.lock"
    if lock.exists():
        try:
            pid = int(lock.read_text().strip() or "0")
        except ValueError:
            pid = 0
        if pid > 0 and pid != os.getpid() and pid_alive(pid):
            raise KdistillError(f"{directory} is in use by another sweep (pid {pid}); wait for it or choose another sweep.out")
    lock.write_text(str(os.getpid()))
    return lock


def _prepare_dir(directory: Path) -> None:
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise KdistillError(f"sweep.out: {directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not (
            (directory / "study.db").is_file() and Owned(directory).is_owned()):
        raise KdistillError(f"sweep.out: {directory} is not empty and holds no sweep kdistill wrote (no study.db and "
                            f"{MANIFEST}); choose another sweep.out")
    Owned(directory).claim(*OUTPUTS)


def run_sweep(config_path: str | Path, overrides: list[str], *, trials: int | None = None, out: str | None = None,
              methods: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the sweep the config describes; returns the summary written to trials.json.

    `trials` is the study's total (finished and pruned trials count); `methods` adds `distill.method` to the space.
    """
    try:
        import optuna
    except ImportError:
        raise KdistillError("kdistill sweep needs Optuna: pip install 'kdistill[sweep]'") from None
    from optuna.trial import TrialState

    from kdistill import tasks

    task = tasks.for_config(config_path, overrides)
    config_model = task.config_model("distill")
    settings = _distill_settings(config_model)
    goal = Objective.of(task)
    raw = apply_overrides(read_yaml(config_path), overrides)
    raw.setdefault("name", Path(config_path).stem)
    try:
        sweep = SweepConfig.model_validate(raw.pop("sweep", None) or {})
    except ValidationError as exc:
        raise KdistillError(format_validation_error(exc, f"{config_path}: sweep")) from None
    if trials is not None:
        sweep.trials = trials
    if methods:
        for name in methods:
            _method_fields(name)  # an unknown name fails here, before anything is written
        sweep.space["distill.method"] = list(methods)
    _check_distill_keys(sweep.space, settings)
    base = validate_config(raw, config_model, source=str(config_path))  # the config itself must be valid
    if "distill.method" in sweep.space:
        raw = _settings_into_section(raw, base.distill.method, settings)
    directory = Path(out or sweep.out or f"runs/{base.name}-sweep")
    _prepare_dir(directory)
    lock = _lock(directory)
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failing trial is reported once, by the CLI
        storage = optuna.storages.RDBStorage(f"sqlite:///{directory.resolve() / 'study.db'}")
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials, n_warmup_steps=1)
                  if sweep.prune else optuna.pruners.NopPruner())
        sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=min(10, max(1, sweep.trials // 2)))
        study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize" if goal.maximize else "minimize", load_if_exists=True)
        fingerprint = _fingerprint(raw, sweep)
        recorded = study.user_attrs.get("fingerprint")
        if recorded is None:
            study.set_user_attr("fingerprint", fingerprint)
            study.set_user_attr("config", raw)
            study.set_user_attr("space", sweep.space)
        elif recorded != fingerprint:
            raise KdistillError(f"{directory} holds a sweep of another config or search space; continue it with the same "
                                "config (only --trials may grow), or choose another --out")
        retried = set(study.user_attrs.get("retried", []))
        interrupted = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                       if t.user_attrs.get("interrupted") and t.number not in retried]
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # killed with the last sweep
            storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
            interrupted.append(stale)
        for trial in interrupted:  # Ctrl-C'd or killed: run again with the same values
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            retried.add(trial.number)
            log(f"trial {trial.number} was interrupted; it will run again with the same values")
        study.set_user_attr("retried", sorted(retried))
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

        def objective(trial: Any) -> float:
            values = sample_overrides(trial, sweep.space, base.distill.method, settings)
            run_dir = Owned(directory).path(f"trial-{trial.number:03d}", kind=FOLDER)
            trial_raw = apply_overrides(raw, _to_override_list(values) + [f"out={run_dir}", f"name={base.name}-trial{trial.number}"])
            cfg = validate_config(trial_raw, config_model, source=f"{config_path} (trial {trial.number}: {values})")
            trial.set_user_attr("overrides", values)
            scores: list[float] = []

            def report(record: dict) -> None:
                scores.append(record[goal.val_key])
                trial.report(record[goal.val_key], record["epoch"])
                trial.set_user_attr("epochs", record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

            t0 = time.perf_counter()
            try:
                row = task.run("distill", cfg, overwrite=True, progress=False, on_epoch_end=report)
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)  # Optuna marks it failed; the next sweep runs it again
                raise
            except NonFiniteError as exc:  # a diverging setting is an outcome of the search, not the end of it
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                trial.set_user_attr("diverged", str(exc).split(";")[0])
                log(f"trial {trial.number}: {_describe(values)} -> diverged ({str(exc).split(';')[0]})")
                raise optuna.TrialPruned("diverged") from None
            except optuna.TrialPruned:
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                log(f"trial {trial.number}: {_describe(values)} -> pruned at epoch {trial.user_attrs.get('epochs')} "
                    f"(val {goal.show(goal.best(scores))})")
                raise
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr(goal.test_name, row[goal.test_key])
            log(f"trial {trial.number}: {_describe(values)} -> val {goal.show(goal.best(scores))} "
                f"({time.perf_counter() - t0:.0f} s)")
            return goal.best(scores)

        remaining = max(0, sweep.trials - done)
        if remaining:
            log(f"sweep {directory}: {done} trial(s) done, running {remaining} more")
            study.optimize(objective, n_trials=remaining, catch=())
        summary = _write_summary(study, raw, directory, config_path, goal)
    finally:
        lock.unlink(missing_ok=True)
    return summary


def _fingerprint(raw: dict[str, Any], sweep: SweepConfig) -> str:
    """What a study's trials depend on: the config (without `sweep`) and the search space, not the trial count."""
    import hashlib

    text = json.dumps({"config": raw, "space": sweep.space, "prune": sweep.prune, "seed": sweep.seed,
                       "startup_trials": sweep.startup_trials}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(values: dict[str, Any]) -> str:
    return " ".join(f"{k.removeprefix('distill.')}={v:.4g}" if isinstance(v, float) else f"{k.removeprefix('distill.')}={v}"
                    for k, v in values.items())


def _write_summary(study: Any, raw: dict[str, Any], directory: Path, config_path: str | Path,
                   objective: Objective) -> dict[str, Any]:
    from optuna.trial import TrialState

    val_key, test_key = objective.val_key, objective.test_name
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": "diverged" if t.user_attrs.get("diverged") else t.state.name.lower(), "overrides": t.user_attrs.get("overrides", {}),
                     val_key: t.value if t.state == TrialState.COMPLETE else
                     (objective.best(list(t.intermediate_values.values())) if t.intermediate_values else None),
                     "epochs": t.user_attrs.get("epochs"), test_key: t.user_attrs.get(test_key),
                     "seconds": t.user_attrs.get("seconds"), "run_dir": str(directory / f"trial-{t.number:03d}")})
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        raise KdistillError(f"sweep {directory}: no trial completed; see {directory}/trial-*")
    sign = 1 if objective.maximize else -1  # best first: the higher accuracy, the lower perplexity; then the earlier trial
    best = max(complete, key=lambda r: (sign * r[val_key], -r["trial"]))
    best_raw = apply_overrides(raw, _to_override_list(best["overrides"]) + [f"out={directory / 'best'}"])
    summary = {"config": str(config_path), "study": str(directory / "study.db"), "objective": f"best {objective.name}",
               "best": best, "trials": rows}
    write_text_atomic(directory / "best.yaml",
        f"# kdistill sweep: trial {best['trial']} of {len(rows)}, {objective.name} {objective.show(best[val_key])}.\n"
        f"# Reproduce: kdistill distill {directory / 'best.yaml'}\n" + yaml.safe_dump(best_raw, sort_keys=False))
    write_text_atomic(directory / "trials.json", json.dumps(summary, indent=2) + "\n")
    metric = objective.val_key.removeprefix("val_")
    lines = [f"# Sweep of {config_path} ({len(rows)} trials, objective: best {objective.name})", "",
             f"| trial | state | values | val {metric} | epochs | test {metric} | seconds |", "|---|---|---|---|---|---|---|"]
    unknown_last = float("inf")
    for r in sorted(rows, key=lambda r: -sign * r[val_key] if r[val_key] is not None else unknown_last):
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        mark = " (best)" if r is best else ""
        lines.append(f"| {r['trial']}{mark} | {r['state']} | {_describe(r['overrides'])} | {objective.show(r[val_key])} | "
                     f"{r['epochs'] or '-'} | {objective.show(r[test_key])} | {secs} |")
    lines += ["", f"Best: trial {best['trial']}, {_describe(best['overrides'])}; config in {directory / 'best.yaml'}. "
              f"Trials are chosen on {objective.name}; test {metric} is shown, never used to choose."]
    write_text_atomic(directory / "trials.md", "\n".join(lines) + "\n")
    return summary
