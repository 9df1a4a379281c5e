"""Host any proposer as a Ray actor. Proposers are plain classes; this file knows which kinds exist."""

from __future__ import annotations

import asyncio

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
                 options: dict | None = None):
        self.proposer = make_proposer(kind, name, editable, program, seed, options)

    def update(self, baseline):
        return self.proposer.update(baseline)

    def baseline_version(self) -> int:
        return self.proposer.baseline_version()

    async def propose(self, history=(), in_flight=(), baseline=None):
        apropose = getattr(self.proposer, "apropose", None)
        if apropose is not None:
            return await apropose(history, in_flight, baseline)
        return await asyncio.to_thread(self.proposer.propose, history, in_flight, baseline)
