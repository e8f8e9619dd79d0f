"""Evaluation: perplexity and bits per byte, BLiMP, reports and the model card.

    from stentor.eval import load_model_and_tokenizer, read_corpus, evaluate_perplexity, load_blimp, evaluate_blimp
"""

from stentor.eval.blimp import BLIMP_PARADIGMS, BlimpResult, ParadigmScore, evaluate_blimp, load_blimp, sentence_logprobs
from stentor.eval.loading import load_model_and_tokenizer, start_token_id
from stentor.eval.perplexity import PerplexityResult, encode_corpus, evaluate_perplexity, read_corpus, score_stream
from stentor.eval.report import update_model_card, write_eval_report

__all__ = [
    "BLIMP_PARADIGMS",
    "BlimpResult",
    "ParadigmScore",
    "PerplexityResult",
    "encode_corpus",
    "evaluate_blimp",
    "evaluate_perplexity",
    "load_blimp",
    "load_model_and_tokenizer",
    "read_corpus",
    "score_stream",
    "sentence_logprobs",
    "start_token_id",
    "update_model_card",
    "write_eval_report",
]
