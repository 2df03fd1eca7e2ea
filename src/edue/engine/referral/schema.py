"""The typed layout of ``calibration.json``: what :meth:`Calibration.load
<edue.engine.referral.calibration.Calibration.load>` accepts, checked strictly before use.

Numbers must be JSON numbers (a numeric string such as ``"0.5"`` is refused; only the
non-finite values are written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``), counts
must be integers, and the counts must agree with the lists. A file that fails is one
:class:`~edue.errors.ConfigError` line naming the file and every key at fault, the same
machinery as the run configuration's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from edue.errors import ConfigError

Number = StrictFloat | StrictInt
#: a float as :func:`edue.metrics.risk_control.encode_float` writes it
EncodedFloat = StrictFloat | StrictInt | Literal["inf", "-inf", "nan"]
Share = Annotated[Number, Field(gt=0, lt=1)]
Count = Annotated[StrictInt, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Arrays(_Strict):
    sv: list[EncodedFloat]
    expert_sv: list[EncodedFloat]
    soft_dice: list[EncodedFloat]


class _Isotonic(_Strict):
    x: list[Number]
    y: list[Number]


class StructureEntry(_Strict):
    """One structure's calibration (``per_structure.<name>``)."""

    poor_level: Annotated[Number, Field(ge=0, le=1)]
    threshold: EncodedFloat
    alpha: Share
    delta: Share
    n: Count
    n_accepted: Count
    n_poor_accepted: Count
    p_value: Annotated[Number, Field(ge=0, le=1)]
    referral_rate: Annotated[Number, Field(ge=0, le=1)]
    grid: list[EncodedFloat]
    isotonic: _Isotonic
    calibration: _Arrays


class CalibrationFile(_Strict):
    """The top level of ``calibration.json``."""

    format: Literal["edue-calibration"]
    version: StrictInt
    checkpoint: StrictStr
    weights_sha256: StrictStr
    method: StrictStr
    structures: Annotated[list[StrictStr], Field(min_length=1)]
    split: StrictStr
    n_calibration: Count
    n_train: Count
    alpha: Share
    delta: Share
    case_ids: list[StrictStr]
    per_structure: dict[str, StructureEntry]
    ood_gate: dict[str, Any] | None = None
    notes: list[StrictStr] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> CalibrationFile:
        if self.n_calibration != len(self.case_ids):
            raise ValueError(
                f"n_calibration is {self.n_calibration} but case_ids lists {len(self.case_ids)}"
            )
        missing = [s for s in self.structures if s not in self.per_structure]
        if missing:
            raise ValueError(f"per_structure lacks {missing}")
        return self


def check_calibration_file(data: Any, path: str | Path) -> None:
    """Check a parsed ``calibration.json`` against :class:`CalibrationFile`.

    Raises:
        ConfigError: one line naming ``path`` and every key at fault.
    """
    from edue.config import config_error

    try:
        CalibrationFile.model_validate(data)
    except ValidationError as exc:
        clauses = config_error(exc, root=CalibrationFile).reason.replace("config: ", "")
        raise ConfigError(f"malformed calibration file: {clauses}", path) from None
