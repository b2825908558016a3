"""policy/v1 PodDisruptionBudgets as kube-apiserver stores them.

Create resets ``status`` to the zero counts a fresh budget shows before the disruption controller
(which does not run here) fills them in; validation allows at most one of ``minAvailable`` and
``maxUnavailable``, each a non-negative integer or a percentage of at most 100%, and a well-formed
selector. Evictions are not served, so nothing consults the budget.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from hami.simulator.selectors import LabelSelector
from hami.simulator.statuses import StatusError, field_error

JsonObj = dict[str, Any]
Causes = list[JsonObj]

_PERCENT = re.compile(r"^[0-9]+%$")
PERCENT_MSG = (
    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', "
    "regex used for validation is '[0-9]+%')"
)


def prepare_create(pdb: JsonObj) -> None:
    pdb["status"] = {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0}


def _int_or_percent(field: str, value: Any) -> Causes:
    if isinstance(value, bool) or not isinstance(value, int | str):
        return [
            field_error(
                "Invalid", field, f"{orjson.dumps(value).decode()}: must be an integer or a percentage"
            )
        ]
    if isinstance(value, int):
        if value < 0:
            return [field_error("Invalid", field, f"{value}: must be greater than or equal to 0")]
        return []
    if not _PERCENT.match(value):
        return [field_error("Invalid", field, f'"{value}": {PERCENT_MSG}')]
    if int(value[:-1]) > 100:
        return [field_error("Invalid", field, f'"{value}": must not be greater than 100%')]
    return []


def validate(pdb: JsonObj) -> Causes:
    spec = pdb.get("spec") or {}
    causes: Causes = []
    present = [key for key in ("minAvailable", "maxUnavailable") if spec.get(key) is not None]
    if len(present) == 2:
        causes.append(field_error("Invalid", "spec", "minAvailable and maxUnavailable cannot be both set"))
    for key in present:
        causes.extend(_int_or_percent(f"spec.{key}", spec[key]))
    selector = spec.get("selector")
    if selector is not None:
        try:
            if not isinstance(selector, dict):
                raise StatusError(400, "BadRequest", "must be a label selector")
            LabelSelector.from_object(selector)
        except StatusError as e:
            causes.append(
                field_error("Invalid", "spec.selector", f"{orjson.dumps(selector).decode()}: {e.message}")
            )
    return causes


__all__ = ["prepare_create", "validate"]
