"""Shared pytest fixtures."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """tests/data: small real-data samples and the GPT-2 tokenizer (see tests/data/README.md)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> tuple[Path, dict]:
    """`lambda-dpo demo --quick`, run once per session: (its output folder, its summary). The slowest fixture of
    the suite (a few minutes on 2 CPU cores); test_demo checks it and test_playground steers its trained model."""
    from lambda_dpo.demo.pipeline import run_demo

    out = tmp_path_factory.mktemp("quick_demo")
    return out, run_demo(str(out), quick=True)
