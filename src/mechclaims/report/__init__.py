"""Writers that turn a claim run into files under ``reports/``."""

from .claims_json import write_run

__all__ = ["write_run"]
