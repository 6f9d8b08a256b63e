"""Response log-probabilities, one owner per level (docs/design.md, "Log-probabilities"):

- :mod:`.sequence`: ℓ(y | x) of padded sequences without the full ``[N, T, V]`` logits (the training step's
  engine; ``sequence_logps``, ``build_sequences``, ``predicted_logps``).
- :mod:`.prefix_sharing`: the same log-probs with each prompt forwarded once for its k responses.
- :mod:`.batched`: one no-grad pass over many (prompt, responses) rows, length-sorted: any model's log-probs of a
  tokenised dataset or of token lists (the reference before training, the policy and reference in evaluation).
- :mod:`.reference_cache`: the reference's pass run once before training, fingerprinted, cached on disk and
  shared by the processes of a run.
"""

from lambda_dpo.logprobs.sequence import (
    SequenceLogps,
    build_sequences,
    predicted_logps,
    sequence_logps,
    unwrap_model,
)

__all__ = ["SequenceLogps", "build_sequences", "predicted_logps", "sequence_logps", "unwrap_model"]
