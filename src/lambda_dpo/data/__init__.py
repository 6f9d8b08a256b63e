"""Data (docs/spec.md §2): every preference format in, validated listwise records out, tokenised with a chat template.

    ds, report = load_listwise("train.jsonl", return_report=True)     # any format; format="auto" detects it
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(...))
    tokenized = tokenize_listwise(ds, tokenizer, max_length=1024)

Modules: ``records`` (the record shape, validation, reports), ``sources`` (reading files / the hub with line
numbers), ``converters`` (one per input format), ``loading`` (``load_listwise``), ``tokenize``, ``cli``
(``lambda-dpo convert``).
"""

from lambda_dpo.data.converters import FORMATS, detect_format
from lambda_dpo.data.loading import dataset_dimensions, listwise_features, load_listwise, long_lists_warning
from lambda_dpo.data.records import (
    REJECTION_KINDS,
    DataError,
    DataSourceError,
    DataValidationError,
    LoadReport,
    Rejection,
)
from lambda_dpo.data.tokenize import (
    DEFAULT_CHAT_TEMPLATE,
    encode_prompt,
    ensure_chat_template,
    shortest_prompt_lengths,
    tokenize_listwise,
    truncation_summary,
)

__all__ = [
    "long_lists_warning",
    "DEFAULT_CHAT_TEMPLATE",
    "FORMATS",
    "REJECTION_KINDS",
    "DataError",
    "DataSourceError",
    "DataValidationError",
    "LoadReport",
    "Rejection",
    "dataset_dimensions",
    "detect_format",
    "encode_prompt",
    "ensure_chat_template",
    "listwise_features",
    "load_listwise",
    "shortest_prompt_lengths",
    "tokenize_listwise",
    "truncation_summary",
]
