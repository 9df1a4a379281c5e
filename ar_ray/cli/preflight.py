"""What `ar-ray run` checks before it starts Ray: the cheap parts of `ar-ray check`.

The target contract loads, and the chosen proposer can work on it (for mutate: it finds at least one knob).
A problem here is refused at once, with what to do, exit code 2, and nothing started or written."""

from __future__ import annotations

import click

from ar_ray.target import Target, TargetError, load_target


class PreflightError(click.ClickException):
    """A run that cannot work, found before Ray starts."""

    exit_code = 2


def mutate_problem(target: Target) -> str | None:
    """Why the mutate proposer could not propose anything for this target (None when it can)."""
    from proposers.mutate import NoKnobs, knobs_for
    try:
        knobs_for(target.read_editable(), target.editable, target.knobs, target.knobs_off)
    except NoKnobs as e:
        return str(e)
    return None


def preflight(target_dir: str, overrides: dict, proposer: str) -> Target:
    """Load the target and check the proposer can work on it; PreflightError (exit 2) says what to fix."""
    try:
        target = load_target(target_dir, **overrides)
    except TargetError as e:
        raise PreflightError(str(e)) from None
    if proposer == "mutate" and (problem := mutate_problem(target)):
        raise PreflightError(f"the mutate proposer has nothing to tune in target {target.name!r} ({target.root}): "
                             f"{problem}. Or use --proposer llm.")
    return target
