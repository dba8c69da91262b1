"""Test configuration: offline, and the two tiers.

The fast tier (``make test``: ``pytest -m "not slow"``, in parallel) is every test outside
``tests/integration/`` and ``tests/distributed/`` and not marked ``slow``; ``make test-all`` adds the slow
tier (end-to-end scripts, demos, benchmarks, resume, multi-process runs). Shared helpers live in
``testing_utils.py`` (on the path through ``pythonpath`` in pyproject.toml).
"""

import os
from pathlib import Path

import pytest

# Tests never reach a Hub: every model is built from a config and saved locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SLOW_FOLDERS = ("integration", "distributed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        relative = Path(item.path).relative_to(here)
        if relative.parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    """transformers' ``hf_api`` replaced by a recorder: nothing reaches the Hub, every upload is kept."""
    import transformers.trainer

    from testing_utils import RecordingHub

    recorder = RecordingHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: recorder)
    return recorder
