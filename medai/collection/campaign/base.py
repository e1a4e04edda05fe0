"""What every model of the campaign file shares: strict and frozen, errors located at a field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = ["StrictModel", "error_at"]


class StrictModel(BaseModel):
    """A part of the campaign file: unknown keys refused, immutable once validated."""

    # Unknown keys are refused so a misspelt option fails loudly instead of being ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


def error_at(field: str, message: str) -> PydanticCustomError:
    """An error for a field below the one being validated; ``field`` is its relative path."""
    return PydanticCustomError("campaign", "{message}", {"message": message, "field": field})
