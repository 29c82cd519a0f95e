"""Run dirs are relocatable: a run dir copied (``cp -a``) or moved (``mv``) reuses every unit and reads
only its own files, because its records name them relative to the run dir and its fingerprints do
not know where the run dir is; a record of absolute paths from before is repaired by `prepare`."""

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from warm_ray import cli
from warm_ray import files
from warm_ray import rundir
from warm_ray.sources import PREPARED_PATHS, prepared_summary
from warm_ray.testing import TINY, TINY_WARM, mtimes

# TINY's model, smaller data: two base-LM checkpoints (two member inits), one short epoch per member
SETTINGS = [*TINY, "prepare.lm_steps=40", "prepare.checkpoint_steps=[30, 40]", "prepare.n_train=40",
            "prepare.n_selection=16", "prepare.n_test=16", "prepare.n_ood=16", "prepare.max_new_tokens=8",
            *TINY_WARM, "warm.epochs=1", "warm.lmc_points=2"]
RECORDS = (".json", ".md", ".yaml", ".jsonl")


def stage(name: str, run_dir: Path, *extra: str) -> None:
    args = [a for s in [*SETTINGS, *extra] for a in ("--set", s)]
    assert cli.main([name, "--run-dir", str(run_dir), *args]) == 0


def unit_markers(run_dir: Path) -> list[Path]:
    """Every finish record of the run dir, and the linear-probe head (its own record)."""
    return sorted(run_dir.rglob(rundir.MARKER)) + [run_dir / "warm" / "lp_head.safetensors"]


def prepared_paths(summary: dict) -> list[str]:
    return [p for k in PREPARED_PATHS for p in (summary[k] if isinstance(summary[k], list) else [summary[k]])]


def records_naming(run_dir: Path, other: Path) -> list[str]:
    """The records of ``run_dir`` whose text names ``other``."""
    return [str(f) for f in run_dir.rglob("*") if f.suffix in RECORDS and f.is_file() and str(other) in f.read_text()]


def rerun_reuses_everything(run_dir: Path, caplog) -> None:
    """`prepare` and `warm` in ``run_dir`` again: every unit reused, no file rewritten."""
    before = mtimes(unit_markers(run_dir))
    caplog.clear()
    stage("prepare", run_dir)
    stage("warm", run_dir)
    assert mtimes(unit_markers(run_dir)) == before
    said = [r.getMessage() for r in caplog.records if r.name in ("warm_ray.rundir", "warm_ray.prepare", "warm_ray.warm")]
    assert f"prepare in {run_dir / 'prepare'}: reused" in "\n".join(said)
    assert f"warm in {run_dir / 'warm'}: reused" in "\n".join(said)
    assert not [m for m in said if "computed" in m or "fitting it again" in m or "damaged" in m], said


def cp_a(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    """A tiny run dir prepared and warm-trained through the command, and a ``cp -a`` of it kept
    untouched for the other tests to copy: (the run dir, the pristine copy)."""
    root = tmp_path_factory.mktemp("relocate")
    orig = root / "orig"
    stage("prepare", orig)
    stage("warm", orig)
    return orig, cp_a(orig, root / "pristine")


def test_records_name_the_run_dirs_files_relative_to_it(trained):
    orig, _ = trained
    record = json.loads((orig / "prepare" / "prepare.json").read_text())
    assert record["data"] == "prepare/data" and record["checkpoints"] == ["prepare/lm/step_30", "prepare/lm/step_40"]
    assert all(str(orig) not in json.dumps(rundir.read_json(m)) for m in orig.rglob(rundir.MARKER))
    assert json.loads((orig / "warm" / "members" / "member_1" / "spec.json").read_text())["init_dir"].startswith("prepare/")
    # read back, against the run dir wherever it is
    assert all(p.startswith(str(orig)) and Path(p).exists() for p in prepared_paths(prepared_summary(orig)))


def test_a_copy_reads_its_own_files_only(trained, caplog, monkeypatch, tmp_path):
    """``cp -a``, then the original re-prepared with another label noise and later deleted: the copy's
    `prepare` and `warm` reuse everything, open no file of the original, and no record names it."""
    import warm_ray.models as models
    import warm_ray.sources as sources

    caplog.set_level(logging.INFO)
    orig, _ = trained
    copy = cp_a(orig, tmp_path / "copy")
    noise = prepared_summary(orig)["corruption_rate"]
    stage("prepare", orig, "prepare.label_noise=0.45")
    assert prepared_summary(orig)["corruption_rate"] != noise
    opened = []
    for module, name in ((sources, "load_splits"), (models, "load_tokenizer")):
        def spy(path, *args, _real=getattr(module, name), **kw):
            opened.append(str(path))
            return _real(path, *args, **kw)

        monkeypatch.setattr(module, name, spy)
    rerun_reuses_everything(copy, caplog)
    assert opened and all(Path(p).is_relative_to(copy) for p in opened), opened
    summary = prepared_summary(copy)
    assert summary["corruption_rate"] == noise and all(p.startswith(str(copy)) for p in prepared_paths(summary))
    assert not records_naming(copy, orig)
    # with the original gone, nothing changes
    shutil.rmtree(orig)
    rerun_reuses_everything(copy, caplog)
    assert not records_naming(copy, orig)


def test_a_moved_run_dir_reuses_everything(trained, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    orig, pristine = trained
    here = cp_a(pristine, tmp_path / "here")
    moved = tmp_path / "moved"
    subprocess.run(["mv", str(here), str(moved)], check=True)
    rerun_reuses_everything(moved, caplog)
    assert not records_naming(moved, here) and not records_naming(moved, pristine)
    assert not records_naming(moved, orig)


def test_prepare_repairs_a_record_of_absolute_paths(trained, caplog, tmp_path):
    """Records written before paths were relative: read as they are while they name this run dir's
    files (and rewritten relative), not reused once they name files elsewhere (the run dir moved or
    copied): `prepare` recomputes the record from the files here, without training anything again."""
    caplog.set_level(logging.INFO)
    run = cp_a(trained[1], tmp_path / "run")
    out = run / "prepare"
    relative = {k: v for k, v in json.loads((out / "prepare.json").read_text()).items() if k in PREPARED_PATHS}
    assert all(not Path(p).is_absolute() for p in prepared_paths(relative))

    def write_absolute(root: Path) -> None:
        """prepare's record as older code wrote it: absolute paths, of the run dir at ``root``."""
        for path in (out / "prepare.json", out / rundir.MARKER):
            record = json.loads(path.read_text())
            record.get("result", record).update(
                {k: str(root / v) if isinstance(v, str) else [str(root / p) for p in v] for k, v in relative.items()})
            files.atomic_write_json(path, record)

    lm = out / "lm" / "step_40" / "model.safetensors"
    members = mtimes(sorted((run / "warm").rglob(rundir.MARKER)))
    # in place: read as it is, reused, and from now on relative
    write_absolute(run)
    assert prepared_summary(run)["data"] == str(run / "prepare" / "data")
    caplog.clear()
    stage("prepare", run)
    assert f"prepare in {out}: reused" in caplog.text
    assert json.loads((out / "prepare.json").read_text())["data"] == "prepare/data"
    # naming the run dir it was copied from, or one that is gone: not reused; the record is rebuilt from
    # the files here, the base LM kept
    for elsewhere, why in ((trained[1], f"not in {out}"), (tmp_path / "gone", "missing")):
        write_absolute(elsewhere)
        assert prepared_summary(run)["data"] == str(elsewhere / "prepare" / "data")
        stamp = mtimes([lm])
        caplog.clear()
        stage("prepare", run)
        assert f"prepare in {out}: reused" not in caplog.text and "not this run dir's" in caplog.text
        assert "recomputed" in caplog.text and why in caplog.text and mtimes([lm]) == stamp
        assert json.loads((out / "prepare.json").read_text())["data"] == "prepare/data"
    stage("warm", run)
    assert mtimes(sorted((run / "warm").rglob(rundir.MARKER))) == members
