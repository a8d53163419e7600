from __future__ import annotations

import pytest
from pydantic import ValidationError

from rtai_worker.settings import WorkerSettings


def test_task_model_pairs_parse() -> None:
    s = WorkerSettings(tasks="sentiment=vader, embed=minilm-embed,mine=my_pkg.models:factory")
    assert s.task_models() == {"sentiment": "vader", "embed": "minilm-embed", "mine": "my_pkg.models:factory"}


@pytest.mark.parametrize("bad", ["", "sentiment", "sentiment=", "Bad Name=vader", "a=vader,a=vader"])
def test_bad_task_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        WorkerSettings(tasks=bad)


def test_retired_tasks_are_names_the_worker_does_not_serve() -> None:
    assert WorkerSettings(tasks="embed=minilm-embed", retired_tasks=" old-a, old_b ,").retired() == ["old-a", "old_b"]
    assert WorkerSettings().retired() == []
    with pytest.raises(ValidationError, match="serves: sentiment"):
        WorkerSettings(tasks="sentiment=vader", retired_tasks="old,sentiment")
    with pytest.raises(ValidationError, match="retired task name"):
        WorkerSettings(retired_tasks="old=vader")


def test_unknown_worker_env_var_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTAI_WORKER_MAX_BATCH", "8")  # a typo of MAX_BATCH_SIZE
    with pytest.raises(ValidationError, match="RTAI_WORKER_MAX_BATCH"):
        WorkerSettings()
