"""Host any proposer as a Ray actor. Proposers are plain classes; this file knows which kinds exist."""

from __future__ import annotations

import asyncio
import os

from proposers.base import ProposerBase


def make_proposer(kind: str, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0,
                  options: dict | None = None) -> ProposerBase:
    options = dict(options or {})
    if kind == "mutate":
        from proposers.mutate import MutateProposer
        return MutateProposer(name, editable, program, seed, **options)
    if kind == "llm":
        from proposers.llm import LLMProposer
        return LLMProposer(name, editable, program, seed, **options)
    if ":" in kind:  # "package.module:Class", a proposer of the user's own
        import importlib
        module, _, cls = kind.partition(":")
        return getattr(importlib.import_module(module), cls)(name, editable, program, seed, **options)
    raise ValueError(f"unknown proposer kind {kind!r}; choose 'mutate', 'llm' or 'package.module:Class'")


class ProposerActor:
    """The Ray-facing shell: build the proposer inside the actor process, forward calls.

    An async actor: a proposer with `async apropose` (the LLM proposer) runs on the actor's event loop,
    many proposals at once; a plain proposer's `propose` runs in a worker thread, so a slow one blocks
    nothing. `max_concurrency` of the actor bounds the proposals in progress either way."""

    def __init__(self, kind: str, name: str, editable: tuple[str, ...], program: str = "", seed: int = 0,
                 options: dict | None = None, keys=None):
        self._keys = keys  # a KeyHolder's handle: the API keys are fetched from it by a call (see KeyHolder)
        self.proposer = make_proposer(kind, name, editable, program, seed, options)

    async def _take_keys(self) -> None:
        """Put the API keys the driver handed over into this process's environment, where the proposer reads them
        (once per actor process: a restarted actor asks again)."""
        if self._keys is not None:
            os.environ.update(await self._keys.get.remote())
            self._keys = None

    def update(self, baseline):
        return self.proposer.update(baseline)

    def baseline_version(self) -> int:
        return self.proposer.baseline_version()

    def prime(self, history) -> int:
        prime = getattr(self.proposer, "prime", None)  # a proposer of the user's own need not have it
        return prime(list(history)) if prime is not None else 0

    async def propose(self, history=(), in_flight=(), baseline=None):
        await self._take_keys()
        apropose = getattr(self.proposer, "apropose", None)
        if apropose is not None:
            return await apropose(history, in_flight, baseline)
        return await asyncio.to_thread(self.proposer.propose, history, in_flight, baseline)


class KeyHolder:
    """Holds the LLM API keys in memory for the proposer actors of one run.

    Anything in an actor's runtime_env is written by Ray to runtime_env_agent.log in its session folder (world-
    readable, kept after the run) and shown by its state API; so the driver hands the keys over in a method call
    (`hold`), whose arguments Ray neither logs nor shows, and each proposer actor fetches them with `get` when it
    first proposes (again after a restart). Nothing of it touches the disk. The holder lives as long as a proposer
    actor holds its handle."""

    def __init__(self):
        self._keys: dict[str, str] = {}

    def hold(self, keys: dict[str, str]) -> int:
        self._keys = dict(keys)
        return len(self._keys)

    def get(self) -> dict[str, str]:
        return dict(self._keys)
