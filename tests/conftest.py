"""Shared pytest fixtures."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """tests/data: small real-data samples and the GPT-2 tokenizer (see tests/data/README.md)."""
    return DATA_DIR
