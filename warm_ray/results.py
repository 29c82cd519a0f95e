"""The names in a stage's results, written once: what the WARM driver writes its table under, and
small typed readers of the WARM, RL and WARP results that the sweep and the study read back.

A stage saves its results as JSON (``<run_dir>/<stage>/results.json`` and the ``result`` of its
``unit.json``). The JSON format is the one the stages always wrote; this module only names it,
so that a renamed row, set or field fails where it is read, naming what is missing, instead of
a key typed a second time somewhere silently meaning something else.

    r = WarmResults.from_json(json.loads(path.read_text()))
    r.acc(WARM, TEST_OOD)          # pairwise accuracy of the WARM RM on the OOD test split
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType

# ------------------------------------------------------------------------------------------
# WARM: the evaluation table, {row: {set: pairwise accuracy}}
# ------------------------------------------------------------------------------------------

# the sets (columns), in the order of every table
TRAIN_CLEAN = "train_clean"
TRAIN_CORRUPTED = "train_corrupted"  # agreement with the flipped label: memorisation of noise
SELECTION = "selection"  # the only split members and soups are chosen on
TEST_ID = "test_id"
TEST_OOD = "test_ood"
SETS = (TRAIN_CLEAN, TRAIN_CORRUPTED, SELECTION, TEST_ID, TEST_OOD)

# the rows (models)
WARM = "WARM"  # the uniform weight average of the members
ENS = "ENS"  # the average of the members' predictions
GREEDY_SOUP = "greedy soup"  # the weight average of the members the greedy recipe kept
BEST_MEMBER = "best member (selection)"  # the member best on the selection split
MEAN_MEMBER = "mean member"  # the members' accuracies averaged
MODELS = (BEST_MEMBER, MEAN_MEMBER, ENS, WARM, GREEDY_SOUP)
_MEMBER = "member "


def member_row(index: int | str) -> str:
    """The row of member ``index``."""
    return f"{_MEMBER}{index}"


def warm_table(members: Mapping[str, Mapping[str, float]], *, ens: Mapping[str, float],
               warm: Mapping[str, float], greedy: Mapping[str, float],
               best_member: str) -> dict[str, dict[str, float]]:
    """The WARM table as results.json holds it, from each model's accuracy per set.

    ``members``: member index (as a string) -> accuracies, in member order; ``best_member`` is one
    of those indices. Rows: the members, ENS, WARM, the greedy soup, the best member on the
    selection split (a copy of its row) and the mean member.
    """
    ids = list(members)
    sets = [k for k in SETS if k in ens]  # user data may lack flipped labels or an OOD split
    table = {member_row(i): {k: members[i][k] for k in sets} for i in ids}
    table[ENS] = {k: ens[k] for k in sets}
    table[WARM] = {k: warm[k] for k in sets}
    table[GREEDY_SOUP] = {k: greedy[k] for k in sets}
    table[BEST_MEMBER] = dict(table[member_row(best_member)])
    table[MEAN_MEMBER] = {k: sum(members[i][k] for i in ids) / len(ids) for k in sets}
    return table


def _get(mapping, key: str, where: str):
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(f"{where}: no {key!r} (has: {', '.join(map(str, mapping)) or 'nothing'})")
    return mapping[key]


@dataclass(frozen=True)
class WarmResults:
    """The WARM stage's results (``warm/results.json``, or the ``rm`` part of a study seed)."""

    # row -> set -> pairwise accuracy; every row of MODELS and every member, each with every set
    table: Mapping[str, Mapping[str, float]]
    # seconds spent training the members and in the whole stage (None where not recorded)
    seconds_train: float | None = None
    seconds_total: float | None = None

    @classmethod
    def from_json(cls, results: Mapping) -> WarmResults:
        raw = _get(results, "table", "WARM results")
        table = {}
        # the OOD set is optional (a user's data may have none), but then in no row
        ood = any(isinstance(v, Mapping) and TEST_OOD in v for v in raw.values()) if isinstance(raw, Mapping) else True
        for row in [*(r for r in raw if str(r).startswith(_MEMBER)), *MODELS]:
            accs = _get(raw, row, "WARM results table")
            table[row] = MappingProxyType({k: float(_get(accs, k, f"WARM results table, row {row!r}")) for k in SETS
                                           if k != TEST_OOD or ood})
        seconds = results.get("seconds") or {}
        return cls(MappingProxyType(table), _float_or_none(seconds.get("train")),
                   _float_or_none(seconds.get("total")))

    def acc(self, row: str, split: str) -> float:
        """Pairwise accuracy of the model ``row`` on the set ``split``."""
        return _get(_get(self.table, row, "WARM results table"), split, f"WARM results table, row {row!r}")

    @property
    def member_rows(self) -> list[str]:
        return [r for r in self.table if r.startswith(_MEMBER)]

    @property
    def members(self) -> int:
        return len(self.member_rows)


def _float_or_none(v) -> float | None:
    return None if v is None else float(v)


# ------------------------------------------------------------------------------------------
# RL: one run's summary (actors.rl.run_rl)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RLPoint:
    """Means over a window of steps of one RL run's metrics."""

    proxy_reward: float
    gold_reward: float
    kl_sft: float

    @classmethod
    def from_json(cls, d: Mapping, where: str = "RL results") -> RLPoint:
        return cls(**{f.name: float(_get(d, f.name, where)) for f in fields(cls)})


@dataclass(frozen=True)
class RLResults:
    """One RL run's summary (``<run>/summary.json``, the result of ``run_rl``)."""

    first: RLPoint  # the first steps
    final: RLPoint  # the last steps
    seconds_this_run: float

    @classmethod
    def from_json(cls, results: Mapping) -> RLResults:
        return cls(RLPoint.from_json(_get(results, "first", "RL results"), "RL results, 'first'"),
                   RLPoint.from_json(_get(results, "final", "RL results"), "RL results, 'final'"),
                   float(_get(results, "seconds_this_run", "RL results")))

    @property
    def gold_gain(self) -> float:
        return self.final.gold_reward - self.first.gold_reward


# ------------------------------------------------------------------------------------------
# WARP: iterations of LITI fronts (actors.warp.run_warp)
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WarpPoint:
    """One evaluated policy of a LITI front: η, and its gold, proxy and KL to SFT."""

    eta: float
    gold: float
    proxy: float
    kl_sft: float

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> WarpPoint:
        return cls(**{f.name: float(_get(d, f.name, where)) for f in fields(cls)})


@dataclass(frozen=True)
class WarpIteration:
    eta: float  # the η whose point starts the next iteration
    fronts: Mapping[str, tuple[WarpPoint, ...]]  # merge method -> points, in η order
    merge: str = "slerp"  # warp.merge: the method whose point at η starts the next iteration

    def front(self, method: str) -> tuple[WarpPoint, ...]:
        return _get(self.fronts, method, "WARP iteration fronts")

    def point(self, method: str, eta: float) -> WarpPoint:
        front = self.front(method)
        for p in front:
            if p.eta == eta:
                return p
        raise ValueError(f"WARP iteration front {method!r}: no point at η={eta:g} "
                         f"(has {', '.join(f'{p.eta:g}' for p in front)})")


@dataclass(frozen=True)
class WarpResults:
    """The WARP stage's results (``warp/results.json``)."""

    iterations: tuple[WarpIteration, ...]
    seconds: float

    @classmethod
    def from_json(cls, results: Mapping) -> WarpResults:
        its = []
        for i, rec in enumerate(_get(results, "iterations", "WARP results")):
            where = f"WARP results, iteration {i + 1}"
            fronts = {m: tuple(WarpPoint.from_json(p, f"{where}, front {m!r}") for p in pts)
                      for m, pts in _get(rec, "fronts", where).items()}
            its.append(WarpIteration(float(_get(rec, "eta", where)), MappingProxyType(fronts), rec.get("merge", "slerp")))
        if not its:
            raise ValueError("WARP results: no iterations")
        return cls(tuple(its), float(_get(results, "seconds", "WARP results")))

    @property
    def last(self) -> WarpIteration:
        return self.iterations[-1]
