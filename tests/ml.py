"""Helpers for the model service tests: skip without the ``ml`` extra (fail in CI), start and reach a runner."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from allocator.catalog import by_name
from services.capabilities import module_present
from services.runners import make_runner
from services.runners.process import ProcessRunner
from services.supervisor import RestartPolicy

TEST_POLICY = RestartPolicy(backoff_initial=0.5, backoff_max=2.0, max_failures=2, ready_timeout=90.0, check_interval=0.2)


def need_modules(*modules: str) -> None:
    """Skip when the ``ml`` extra is missing; with RMAP2P_REQUIRE_ML=1 (CI) that is a failure."""
    missing = [m for m in modules if not module_present(m)]
    if not missing:
        return
    why = f"needs the ml extra ({', '.join(missing)} missing): pip install -c constraints-cpu.txt '.[test,ml]'"
    if os.environ.get("RMAP2P_REQUIRE_ML") == "1":
        pytest.fail(f"RMAP2P_REQUIRE_ML=1 but {why}")
    pytest.skip(why)


async def started(service: str, env: dict[str, str], timeout: float = 90.0) -> ProcessRunner:
    """A real runner of ``service`` on a free port, waited for until healthy."""
    spec = by_name(service)
    assert spec is not None
    runner = make_runner(spec, "127.0.0.1", 0, "test-node", env, policy=TEST_POLICY)
    await runner.start()
    deadline = time.monotonic() + timeout
    while await runner.health() != "healthy":
        if runner.failed or time.monotonic() > deadline:
            await runner.stop()
            raise AssertionError(f"{service} not healthy: {runner.failed or 'timed out'}")
        await asyncio.sleep(0.2)
    return runner


def url(runner: ProcessRunner, path: str) -> str:
    return f"http://127.0.0.1:{runner.port}{path}"


TINY_NER_TRAIN = [
    ("Alice Smith lives in London.", [(0, 11, "PERSON"), (21, 27, "GPE")]),
    ("Bob Jones moved to Manchester last year.", [(0, 9, "PERSON"), (19, 29, "GPE")]),
    ("Carol White works for Acme Bank in Leeds.", [(0, 11, "PERSON"), (22, 31, "ORG"), (35, 40, "GPE")]),
    ("The council in Bristol wrote to David Brown.", [(15, 22, "GPE"), (32, 43, "PERSON")]),
    ("Acme Bank sent a letter to Alice Smith.", [(0, 9, "ORG"), (27, 38, "PERSON")]),
    ("She owes money to Northern Water.", [(18, 32, "ORG")]),
    ("Nothing to see here.", []),
]


def train_tiny_ner(path: str, *, with_ner: bool = True, max_epochs: int = 200) -> str:
    """Train a tiny spaCy NER pipeline on ``TINY_NER_TRAIN`` until it reproduces it, save it to ``path``.

    It knows a handful of sentences, not English: the tests ask it about
    sentences it was trained on. ``with_ner=False`` saves a pipeline without
    an ``ner`` component (a model the service must refuse).
    """
    import random

    import spacy
    from spacy.training import Example

    spacy.util.fix_random_seed(0)
    rng = random.Random(0)
    nlp = spacy.blank("en")
    nlp.meta["name"] = "rmap2p_tiny_ner"
    nlp.meta["version"] = "0.0.1"
    if not with_ner:
        nlp.add_pipe("sentencizer")
        nlp.to_disk(path)
        return path
    ner = nlp.add_pipe("ner")
    for _, spans in TINY_NER_TRAIN:
        for _, _, label in spans:
            ner.add_label(label)
    examples = [Example.from_dict(nlp.make_doc(text), {"entities": spans}) for text, spans in TINY_NER_TRAIN]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(max_epochs):
        rng.shuffle(examples)
        nlp.update(examples, sgd=optimizer, drop=0.0)
        if all([(e.start_char, e.end_char, e.label_) for e in nlp(text).ents] == spans for text, spans in TINY_NER_TRAIN):
            break
    else:
        raise AssertionError(f"the tiny NER model did not learn its {len(TINY_NER_TRAIN)} sentences in {max_epochs} epochs")
    nlp.to_disk(path)
    return path
