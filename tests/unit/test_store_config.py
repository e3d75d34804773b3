"""The ``store:`` config section: defaults, parsing, errors naming the key."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from agentic_fast.core.config import Config, StoreConfig
from agentic_fast.core.errors import ConfigError
from agentic_fast.store import build_store
from agentic_fast.store.redis import RedisCallStore
from agentic_fast.store.sqlite import SQLiteCallStore

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_embedded_sqlite() -> None:
    store = Config().store
    assert store.backend == "sqlite"
    assert store.file == Path("~/.agentic_fast/calls.db").expanduser()
    assert isinstance(build_store(store), SQLiteCallStore)


def test_redis_from_yaml() -> None:
    cfg = Config.from_text("store:\n  backend: redis\n  url: ${REDIS_URL}\n"
                           "  retention_days: 7\n  queue_size: 100\n  batch_max: 50\n",
                           env={"REDIS_URL": "redis://:pw@10.0.0.5:6380/2"})
    assert (cfg.store.backend, cfg.store.retention_days) == ("redis", 7.0)
    store = build_store(cfg.store)
    assert isinstance(store, RedisCallStore) and store.url == "redis://:pw@10.0.0.5:6380/2"
    assert cfg.masked()["store"]["url"] != cfg.store.url  # may hold a password


@pytest.mark.parametrize(("yaml", "key", "words"), [
    ("store:\n  backend: postgres\n", "store.backend", "sqlite, redis"),
    ("store:\n  url: http://127.0.0.1:6379\n", "store.url", "redis://"),
    ("store:\n  url: redis://127.0.0.1:6379/x\n", "store.url", "database number"),
    ("store:\n  queue_size: 10\n  batch_max: 20\n", "store.batch_max", "queue_size"),
    ("store:\n  retry_initial_s: 5\n  retry_max_s: 1\n", "store.retry_max_s", "retry_initial"),
    ("store:\n  retention_days: -1\n", "store.retention_days", ">= 0"),
    ("store:\n  batch_interval_s: 0\n", "store.batch_interval_s", "> 0"),
    ("store:\n  pth: x\n", "store.pth", "did you mean 'path'"),
])
def test_bad_values_name_the_key(yaml: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        Config.from_text(yaml)
    assert info.value.key == key and key in str(info.value)


def test_config_yaml_documents_every_store_key() -> None:
    text = (ROOT / "config.yaml").read_text()
    section = text[text.index("\nstore:"):]
    cfg = Config.load(ROOT / "config.yaml", env={})
    assert cfg.store == StoreConfig()  # the file's values are the defaults
    for f in fields(StoreConfig):
        assert f"\n  {f.name}:" in section, f.name
