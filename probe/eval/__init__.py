"""Behavioural evaluation: does the model's answer follow the image?"""

from probe.eval.candidates import Candidates, plan_candidates, read_choices_file
from probe.eval.dependence import (
    EvalConfig,
    evaluate_dependence,
    format_dependence_table,
    load_dependence,
    mismatch_partners,
    save_dependence,
)
from probe.eval.intervals import cluster_share_ci
from probe.eval.normalise import answers_match, normalise
from probe.eval.predict import Around, answer_logprob, answer_logprobs, candidate_logprobs, rank_choices
from probe.eval.run import run_eval

__all__ = ["Around", "Candidates", "EvalConfig", "answer_logprob", "answer_logprobs", "answers_match", "candidate_logprobs", "cluster_share_ci",
           "evaluate_dependence", "format_dependence_table", "load_dependence", "mismatch_partners", "normalise",
           "plan_candidates", "rank_choices", "read_choices_file", "run_eval", "save_dependence"]
