"""ParameterServer: holds the WARM members and their versioned weight average.

A named Ray actor that needs no CPU of its own (``num_cpus=0``): trainers (or the driver)
push members' weights as ObjectRefs, the server keeps the running uniform average of its members
(WARM Eq. 4, through ``warm_ray.merge.average``), numbers each version, and serves the current
average; ``average_of`` averages any subset with any weights without serving it (greedy soup).
Members and average are persisted as safetensors with a JSON manifest, so a restarted server
(``max_restarts``) comes back with them. A stored file that no longer loads is dropped with a log
line (the member is pushed again from its ``final/`` weights, the average recomputed from the
members); ``retain`` keeps only the members of the current config, each under the fingerprint it
was pushed with.

Online refreshes (``rl.online``, ``actors.rl.online``): each member trainer ``stage``s its refreshed
weights under the refresh's number; ``publish`` replaces every member of the refresh and serves one new
average, or, if any member staged nothing (it died, or its weights were not finite), drops the refresh
and keeps serving the version it had. ``snapshot`` / ``load_snapshot`` keep a version to come back to
(a resumed RL run).

Buffers: each version is written into buffers the server keeps (``merge.average(out=...)``),
two sets alternating, so a new version costs no allocation and the served version is never
written while it is served. A version handed out never changes afterwards: through Ray,
``get_weights.remote()`` serialises the return value into the object store (a copy) before
the actor runs its next method, so the buffers can be reused; a direct call (the class used
as a plain object) returns the tensors themselves, and those buffers are given away: the
server never writes them again.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from warm_ray import merge
from warm_ray.files import atomic_write_json
from warm_ray.models import load_state_dict, save_state_dict
from warm_ray.reward import finite_state_dict

log = logging.getLogger("warm_ray.parameter_server")


def in_member_order(member_ids: list[str], weights: list[float] | None) -> tuple[list[str], list[float] | None]:
    """``member_ids`` and their weights sorted by member: numbers by value ("2" before "10"), then
    other names. Averages are summed in this order, whatever order the members arrived or were
    listed in: float addition is not associative, and an average's bits must not depend on which
    member finished training first."""
    order = sorted(range(len(member_ids)), key=lambda j: (0, int(member_ids[j]), "") if member_ids[j].isdigit()
                   else (1, 0, member_ids[j]))
    return [member_ids[j] for j in order], None if weights is None else [weights[j] for j in order]


def _returned_through_ray(task: str) -> bool:
    """True while the current call runs as the Ray actor task ``task`` ("Class.method").

    Ray copies such a task's return value into its object store before the actor runs its
    next task; anything else (a plain object, one method calling another) returns the very
    tensors. Unknown cases answer False, which only costs an allocation later.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    ctx = ray.get_runtime_context()
    if ctx.get_actor_id() is None:
        return False
    return ctx.get_task_name() == task


class ParameterServer:
    def __init__(self, store_dir: str):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        self.store = Path(store_dir)
        self.store.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, dict[str, torch.Tensor]] = {}
        self.meta: dict[str, dict] = {}
        self.excluded: dict[str, str] = {}
        self.selection: list[str] = []
        self.weights: list[float] | None = None
        self.version = 0
        self.average: dict[str, torch.Tensor] | None = None
        # The buffers the next version is written into (the version before the served one),
        # and whether the served version's buffers left the server (then they are not reused).
        self._spare: dict[str, torch.Tensor] | None = None
        self._given_away = True
        self._soup: dict[str, torch.Tensor] | None = None
        # online refreshes: {refresh: {member: (weights, meta)}} staged, not yet published
        self._pending: dict[int, dict[str, tuple[dict, dict]]] = {}
        self._restore()

    # -- persistence ------------------------------------------------------------------------

    def _manifest(self) -> dict:
        return {"version": self.version, "members": self.meta, "excluded": self.excluded,
                "selection": self.selection, "weights": self.weights}

    def _persist(self) -> None:
        if self.average is not None:
            save_state_dict(self.average, self.store / "average.safetensors", metadata={"version": str(self.version)})
        atomic_write_json(self.store / "manifest.json", self._manifest())

    def _restore(self) -> None:
        import json

        manifest = self.store / "manifest.json"
        if not manifest.exists():
            return
        try:
            m = json.loads(manifest.read_text())
        except ValueError as e:
            log.warning("%s is damaged (%s): starting with an empty store; members are pushed again", manifest, e)
            return
        self.version, self.meta, self.excluded = m["version"], m["members"], m["excluded"]
        self.selection, self.weights = m["selection"], m["weights"]
        dropped = False
        for member_id in list(self.meta):
            path = self.store / f"member_{member_id}.safetensors"
            try:
                self.members[member_id] = load_state_dict(path)
            except Exception as e:  # a damaged file: drop the member, whoever pushed it pushes it again
                log.warning("%s is damaged (%s): member %s dropped from the store until it is pushed again "
                            "(the WARM driver restores it from the member's final/ weights)", path, e, member_id)
                self._forget(member_id)
                dropped = True
        average = self.store / "average.safetensors"
        if average.exists() and not dropped and self.selection:
            try:
                self.average = load_state_dict(average)
            except Exception as e:
                log.warning("%s is damaged (%s): recomputing the average from the members", average, e)
        if self.average is None and self.selection:
            self._reaverage()
        log.info("restored %d members and average version %d from %s", len(self.members), self.version, self.store)

    def _forget(self, member_id: str) -> None:
        self.members.pop(member_id, None)
        self.meta.pop(member_id, None)
        if member_id in self.selection:
            keep = [i for i, mid in enumerate(self.selection) if mid != member_id]
            self.weights = None if self.weights is None else [self.weights[i] for i in keep]
            self.selection = [self.selection[i] for i in keep]
        (self.store / f"member_{member_id}.safetensors").unlink(missing_ok=True)

    def retain(self, fingerprints: dict[str, str]) -> dict:
        """Keep only the members named in ``fingerprints`` and pushed under that fingerprint (a run
        with fewer members, or a member retrained under a new spec, leaves no stale copy); re-average."""
        stale = [i for i in self.members if self.meta.get(i, {}).get("fingerprint") != fingerprints.get(i)]
        stale += [i for i in self.meta if i not in self.members and i not in stale]
        for member_id in stale:
            log.info("member %s dropped from the store: not a member of this config, or pushed under "
                     "another one", member_id)
            self._forget(member_id)
        self.excluded = {i: r for i, r in self.excluded.items() if i in fingerprints}
        if self.selection:
            if stale or self.average is None:
                self._reaverage()
        else:
            self.average = None
            (self.store / "average.safetensors").unlink(missing_ok=True)
            self._persist()
        return {"dropped": stale, "members": sorted(self.members)}

    # -- members ----------------------------------------------------------------------------

    def push(self, member_id: str, weights: dict[str, torch.Tensor], meta: dict | None = None) -> dict:
        """Add or replace a member (``weights`` may be passed as an ObjectRef); re-average.

        A member whose weights are not finite is excluded, with the reason logged and returned.
        A member of another architecture (keys, shapes, dtypes) raises ValueError.
        """
        member_id = str(member_id)
        bad = finite_state_dict(weights)
        if bad is not None:
            reason = f"member {member_id} excluded: key {bad!r} has NaN or Inf"
            log.warning(reason)
            self.excluded[member_id] = reason
            self._persist()
            return {"accepted": False, "reason": reason, "version": self.version}
        if self.members:
            ref_id = next(iter(self.members))
            try:
                merge.check_compatible([self.members[ref_id], weights], "member")
            except ValueError as e:
                raise ValueError(f"member {member_id} does not match member {ref_id}: {e}") from None
        self.members[member_id] = {k: v.detach().cpu() for k, v in weights.items()}
        self.meta[member_id] = dict(meta or {})
        self.excluded.pop(member_id, None)
        save_state_dict(self.members[member_id], self.store / f"member_{member_id}.safetensors")
        if member_id not in self.selection:
            self.selection.append(member_id)
            self.weights = None if self.weights is None else [*self.weights, 1.0]
        self._reaverage()
        log.info("member %s in: average version %d over %d members", member_id, self.version, len(self.selection))
        return {"accepted": True, "version": self.version}

    def _select(self, member_ids: list[str], weights: list[float] | None = None) -> int:
        """Serve the average of a subset of members, uniformly or with weights; returns the new version.

        No driver calls it: WARM serves the uniform average of every member. The tests use it for
        versions that are not one more push (a weighted subset), to check the buffer rules on them."""
        member_ids = [str(i) for i in member_ids]
        unknown = [i for i in member_ids if i not in self.members]
        if unknown:
            raise ValueError(f"unknown members {unknown}; known: {sorted(self.members)}")
        merge.normalise_weights(weights, len(member_ids))  # validates
        self.selection, self.weights = member_ids, weights
        self._reaverage()
        return self.version

    def _reaverage(self) -> None:
        ids, weights = in_member_order(self.selection, self.weights)
        out, self._spare = (self._spare if self._spare is not None else {}), None
        try:
            average = merge.average([self.members[i] for i in ids], weights, out=out)
        except ValueError:
            self._spare = out or None  # still ours; the served version is untouched
            raise
        previous, previous_given_away = self.average, self._given_away
        self.average, self._given_away = average, False
        if previous is not None and not previous_given_away:
            self._spare = previous
        self.version += 1
        self._persist()

    # -- online refreshes: every member's new weights staged, then published as one version ----

    def stage(self, refresh: int, member_id: str, weights: dict[str, torch.Tensor], meta: dict | None = None) -> bool:
        """Hold a member's weights of refresh ``refresh`` until ``publish``: the served average does not
        change. A member whose weights are not finite is not staged (False), so the refresh is not published."""
        bad = finite_state_dict(weights)
        if bad is not None:
            log.warning("refresh %d: member %s's weights have NaN or Inf (key %r): not staged", refresh, member_id, bad)
            return False
        pending = self._pending.setdefault(int(refresh), {})
        pending[str(member_id)] = ({k: v.detach().cpu() for k, v in weights.items()}, dict(meta or {}))
        return True

    def publish(self, refresh: int, member_ids: list[str]) -> dict:
        """Replace ``member_ids`` by their weights staged for ``refresh`` and serve the new average as one
        version, if every one of them was staged; else nothing changes and the staged weights are dropped.
        Either way no average is ever served with some members of a refresh and not others."""
        pending = self._pending.pop(int(refresh), {})
        missing = [str(i) for i in member_ids if str(i) not in pending]
        if missing:
            log.warning("refresh %d not published: member(s) %s staged nothing; serving version %d still",
                        refresh, missing, self.version)
            return {"published": False, "missing": missing, "version": self.version}
        for member_id, (weights, meta) in pending.items():
            merge.check_compatible([self.members[member_id], weights], "member")
            self.members[member_id] = weights
            self.meta[member_id] = {**self.meta.get(member_id, {}), **meta, "refresh": int(refresh)}
            save_state_dict(weights, self.store / f"member_{member_id}.safetensors")
        self._reaverage()
        log.info("refresh %d published: average version %d over %d members", refresh, self.version, len(self.selection))
        return {"published": True, "missing": [], "version": self.version}

    def discard(self, refresh: int) -> None:
        """Drop what was staged for ``refresh`` (a refresh given up)."""
        self._pending.pop(int(refresh), None)

    def member_weights(self, member_id: str) -> dict[str, torch.Tensor]:
        """A member's weights as the server holds them (the last published)."""
        return self.members[str(member_id)]

    def snapshot(self, path: str) -> str:
        """Every member and the served average, as one atomic dir at ``path`` (a version to come back to)."""
        from warm_ray.files import atomic_dir, atomic_write_json

        with atomic_dir(path) as tmp:
            for member_id, weights in self.members.items():
                save_state_dict(weights, tmp / f"member_{member_id}.safetensors")
            atomic_write_json(tmp / "manifest.json", self._manifest())
        return str(path)

    def load_snapshot(self, path: str) -> int:
        """Serve the members of a ``snapshot`` dir (the same members, as they were then); the new version."""
        import json

        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        for member_id in manifest["selection"]:
            self.members[member_id] = load_state_dict(path / f"member_{member_id}.safetensors")
            save_state_dict(self.members[member_id], self.store / f"member_{member_id}.safetensors")
        self.meta = manifest["members"]
        self.selection, self.weights = manifest["selection"], manifest["weights"]
        self._reaverage()
        return self.version

    # -- serving ----------------------------------------------------------------------------

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The current WARM average (a ref to it is what ``get_weights.remote()`` returns)."""
        if self.average is None:
            raise ValueError("no members yet: the average is empty")
        if not _returned_through_ray(f"{type(self).__name__}.get_weights"):
            self._given_away = True
        return self.average

    def average_of(self, member_ids: list[str], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
        """An average of any subset, without changing the served one (greedy soup uses this)."""
        ids, weights = in_member_order([str(i) for i in member_ids], weights)
        members = [self.members[i] for i in ids]
        if not _returned_through_ray(f"{type(self).__name__}.average_of"):
            return merge.average(members, weights)
        # Copied out by Ray on return: one scratch set serves every call.
        self._soup = merge.average(members, weights, out=self._soup if self._soup is not None else {})
        return self._soup

    def info(self) -> dict:
        return {**self._manifest(), "n_members": len(self.members)}
