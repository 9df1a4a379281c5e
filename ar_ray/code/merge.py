"""Three-way merges of file sets: re-apply a change made against an older base onto a newer one.

Used by the policy to *rebase* a winning edit onto the current best, and thereby to combine two
concurrent winners. Line-based, diff3 style; written with difflib.
"""

from __future__ import annotations

import difflib

from ar_ray.code.textlines import keepends


def _sync_regions(base: list[str], a: list[str], b: list[str]) -> list[tuple[int, int, int, int]]:
    """Runs of base lines matched, contiguously, in both ``a`` and ``b``: (ib, ia, ib2, len)."""
    ma: dict[int, int] = {}
    mb: dict[int, int] = {}
    for x, y, size in difflib.SequenceMatcher(None, base, a, autojunk=False).get_matching_blocks():
        for k in range(size):
            ma[x + k] = y + k
    for x, y, size in difflib.SequenceMatcher(None, base, b, autojunk=False).get_matching_blocks():
        for k in range(size):
            mb[x + k] = y + k
    regions: list[list[int]] = []
    for i in range(len(base)):
        if i in ma and i in mb:
            if regions:
                r = regions[-1]
                if r[0] + r[3] == i and r[1] + r[3] == ma[i] and r[2] + r[3] == mb[i]:
                    r[3] += 1
                    continue
            regions.append([i, ma[i], mb[i], 1])
    regions.append([len(base), len(a), len(b), 0])
    return [tuple(r) for r in regions]  # type: ignore[misc]


def _changes(base: list[str], side: list[str]) -> list[tuple[int, int, list[str]]]:
    sm = difflib.SequenceMatcher(None, base, side, autojunk=False)
    return [(i1, i2, side[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def _clash(x: tuple[int, int, list[str]], y: tuple[int, int, list[str]]) -> bool:
    if x == y:
        return False
    (a1, a2, _), (b1, b2, _) = x, y
    if a1 < b2 and b1 < a2:  # ranges overlap
        return True
    # an insertion touching (or inside) the other change: order would be a guess
    if a1 == a2 and b1 <= a1 <= b2:
        return True
    if b1 == b2 and a1 <= b1 <= a2:
        return True
    return False


def _merge_chunk(base: list[str], a: list[str], b: list[str]) -> list[str] | None:
    """Combine two differing edits of one region if they touch disjoint base lines."""
    ca, cb = _changes(base, a), _changes(base, b)
    if any(_clash(x, y) for x in ca for y in cb):
        return None
    merged: dict[tuple[int, int], list[str]] = {}
    for s, e, r in ca + cb:
        merged[(s, e)] = r
    out, pos = [], 0
    for (s, e), r in sorted(merged.items()):
        out.extend(base[pos:s])
        out.extend(r)
        pos = e
    out.extend(base[pos:])
    return out


def _eol(lines: list[str]) -> list[str]:
    return [x if x.endswith("\n") else x + "\n" for x in lines]


def three_way_merge(base: str, ours: str, theirs: str) -> tuple[str, bool]:
    """diff3-style line merge; returns (merged text, conflicted?).

    Conflicts are written with ``<<<<<<< ours`` / ``||||||| base`` /
    ``=======`` / ``>>>>>>> theirs`` markers.
    """
    if ours == theirs or theirs == base:
        return ours, False
    if ours == base:
        return theirs, False
    bl, ol, tl = keepends(base), keepends(ours), keepends(theirs)
    out: list[str] = []
    conflicted = False
    ib = io_ = it = 0
    for zb, zo, zt, length in _sync_regions(bl, ol, tl):
        cb, co, ct = bl[ib:zb], ol[io_:zo], tl[it:zt]
        if cb or co or ct:
            if co == cb:
                out.extend(ct)
            elif ct == cb or co == ct:
                out.extend(co)
            else:
                m = _merge_chunk(cb, co, ct)
                if m is not None:
                    out.extend(m)
                else:
                    conflicted = True
                    out.append("<<<<<<< ours\n")
                    out.extend(_eol(co))
                    out.append("||||||| base\n")
                    out.extend(_eol(cb))
                    out.append("=======\n")
                    out.extend(_eol(ct))
                    out.append(">>>>>>> theirs\n")
        out.extend(bl[zb : zb + length])
        ib, io_, it = zb + length, zo + length, zt + length
    return "".join(out), conflicted


def rebase(
    parent: dict[str, str], child: dict[str, str], new_base: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Re-apply the change parent→child onto ``new_base``; (files, conflicted paths).

    Conflicted files hold the merge with conflict markers (``ours`` = new_base,
    ``theirs`` = child); a modify/delete conflict keeps the new_base version.
    """
    out: dict[str, str] = {}
    conflicts: list[str] = []
    for path in sorted(set(parent) | set(child) | set(new_base)):
        p, c, n = parent.get(path), child.get(path), new_base.get(path)
        if c == p:
            res = n
        elif n == p or c == n:
            res = c
        elif c is None or (n is None and p is not None):
            conflicts.append(path)  # one side deleted the file, the other changed it
            res = n
        else:
            res, bad = three_way_merge(p or "", n or "", c)
            if bad:
                conflicts.append(path)
        if res is not None:
            out[path] = res
    return out, conflicts
