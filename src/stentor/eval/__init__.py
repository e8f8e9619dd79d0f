"""Evaluation: perplexity and bits per byte, BLiMP, reports and the model card.

    from stentor.eval import load_model_and_tokenizer, read_corpus, evaluate_perplexity, load_blimp, evaluate_blimp

Names are imported on first use, so that the CLI's `--help` does not import the scorers.
"""

from stentor.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["BLIMP_PARADIGMS", "BlimpResult", "ParadigmScore", "evaluate_blimp", "load_blimp",
                     "sentence_logprobs"], "stentor.eval.blimp"),
    **dict.fromkeys(["load_model_and_tokenizer", "start_token_id"], "stentor.eval.loading"),
    **dict.fromkeys(["PerplexityResult", "encode_corpus", "evaluate_perplexity", "read_corpus", "score_stream"],
                    "stentor.eval.perplexity"),
    **dict.fromkeys(["update_model_card", "write_eval_report"], "stentor.eval.report"),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
