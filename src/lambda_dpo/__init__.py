"""lambda-dpo: multi-preference λ-weighted listwise DPO with inference-time steering."""

__version__ = "0.1.0"

_LAZY = {
    "LambdaDPOTrainer": "lambda_dpo.trainer",
    "LambdaDPOConfig": "lambda_dpo.trainer",
    "generate": "lambda_dpo.generation",
}


def __getattr__(name):
    # Lazy so that `import lambda_dpo` (and the CLI's --help) does not pull in torch/transformers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lambda_dpo' has no attribute {name!r}")


__all__ = ["LambdaDPOTrainer", "LambdaDPOConfig", "generate", "__version__"]
