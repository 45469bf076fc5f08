"""Behavioural evaluation: does the model's answer follow the image?"""

from probe.eval.dependence import (
    evaluate_dependence,
    format_dependence_table,
    load_dependence,
    mismatch_partners,
    save_dependence,
)
from probe.eval.run import run_eval

__all__ = ["evaluate_dependence", "format_dependence_table", "load_dependence", "mismatch_partners",
           "run_eval", "save_dependence"]
