"""Run directories: create, resume, or refuse — never clobber a finished run by accident.

A directory is *finished* when it holds `report.json`; *unfinished* when it holds
`config.yaml` but no report (a run that was killed). The same config resumes an
unfinished run; anything else is refused unless the user passes --overwrite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError


def prepare_run_dir(out: Path, config_yaml: str, model_json: dict[str, Any], *, overwrite: bool) -> bool:
    """Make `out` ready for this run; returns True when it resumes an unfinished run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KdistillError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        is_run = (out / "config.yaml").is_file()
        if not is_run:
            raise KdistillError(f"out: {out} is not empty and is not a kdistill run directory; choose another out=")
        finished = (out / "report.json").is_file()
        same_config = (out / "config.yaml").read_text() == config_yaml
        if overwrite:
            shutil.rmtree(out)
        elif finished:
            raise KdistillError(f"out: {out} already holds a finished run; pass --overwrite to replace it or set out=<another dir>")
        elif same_config:
            return True
        else:
            raise KdistillError(
                f"out: {out} holds an unfinished run of a different config; rerun that config to resume it, "
                "pass --overwrite to start over, or set out=<another dir>"
            )
    (out / "state").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_yaml)
    (out / "model.json").write_text(json.dumps(model_json, indent=2) + "\n")
    return False
