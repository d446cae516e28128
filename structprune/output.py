"""Where a command writes: the policy that never destroys a user's data, and structprune's staging area.

Every verb that writes a folder claims it first, before any work starts (`claim_folder`):
  - a path that does not exist, or an empty folder, is taken;
  - an existing structprune output of the same verb (its config.json names the verb, and it holds nothing
    structprune did not write) is replaced only when the user said `overwrite`; `resume=True` verbs
    (reproduce) continue inside it;
  - anything else is refused in one line: a file, a non-empty folder that is not ours, another verb's run, the
    input run, a folder inside an input run or holding one, the working folder or one of its ancestors.
Files (ONNX exports, bench JSON, reports) follow `claim_file`: a new file, or an existing one with `overwrite`.

All work happens in a staging area beside the destination, `.NAME.structprune/` (so that the final rename is
atomic): `checkpoints/` for per-epoch training checkpoints and search state, `work/` for the folder being
written. Publishing renames `work/` onto the destination and removes the staging area. A failure removes
`work/` and keeps the checkpoints; a killed command leaves the staging area, which the next run of the same
command (same identity: settings and inputs) resumes from, and a different command refuses in one line
(`restart` discards it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structprune.errors import StructpruneError
from structprune.jsonio import write_json_atomic
from structprune.runfiles import ALL_FILES, ALL_FOLDERS, CONFIG_FILE, STAGE_RECORD

log = logging.getLogger(__name__)

STAGE_SUFFIX = ".structprune"


def _is_output_folder(path: Path) -> bool:
    return path.is_dir() and _verb_of(path) is not None


def _verb_of(path: Path) -> str | None:
    """The verb recorded in a structprune output folder's config.json; None for anything else."""
    config = path / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        verb = json.loads(config.read_text()).get("verb")
    except (OSError, ValueError, AttributeError):
        return None
    return verb if isinstance(verb, str) else None


def foreign_entries(path: Path) -> list[str]:
    """Entries at the top of `path` that structprune did not write (sub-folders that are outputs of ours count
    as ours, and so do the hidden temporary files of an atomic write)."""
    return [entry.name for entry in sorted(path.iterdir()) if not _is_own(entry)]


def _is_own(entry: Path) -> bool:
    name = entry.name
    if entry.is_symlink():
        return False
    if entry.is_file():
        return name in ALL_FILES or name.endswith(".png") or (name.startswith(".") and ".tmp" in name)
    if name.startswith(".") and name.endswith(STAGE_SUFFIX):  # a stage of a resumable output, killed mid-way
        return entry.is_dir() and (entry / STAGE_RECORD).is_file()
    return entry.is_dir() and (name in ALL_FOLDERS or name.endswith("_files") or _is_output_folder(entry))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _refuse_around_inputs(out: Path, inputs: Iterable[str | Path], what: str) -> None:
    cwd = Path.cwd().resolve()
    if _inside(cwd, out):
        raise StructpruneError(f"{what}: is the working folder or one of its parents; choose a new folder")
    for given in inputs:
        source = Path(given).resolve()
        if out == source:
            raise StructpruneError(f"{what}: is the input run {given}; write to a new folder")
        if _inside(source, out):
            raise StructpruneError(f"{what}: holds the input run {given}; write to a new folder")
        if _inside(out, source):
            raise StructpruneError(f"{what}: lies inside the input run {given}; write to a new folder beside it")


def _check_parent(out: Path, what: str) -> None:
    probe = out.parent
    while not probe.exists():
        if probe.is_symlink():
            raise StructpruneError(f"{what}: cannot create it ({probe} is a broken link)")
        probe = probe.parent
    if not probe.is_dir():
        raise StructpruneError(f"{what}: cannot create it ({probe} is a file, not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StructpruneError(f"{what}: cannot write here ({probe} is not writable)")


@dataclass
class Output:
    """A destination folder claimed for one verb, with its staging area."""

    path: Path  # as the user gave it (messages name it so)
    verb: str
    overwrite: bool = False
    resume: bool = False
    opened: bool = field(default=False, compare=False)

    @property
    def staging(self) -> Path:
        resolved = self.path.resolve()
        return resolved.parent / f".{resolved.name}{STAGE_SUFFIX}"

    @property
    def checkpoints(self) -> Path:
        return self.staging / "checkpoints"

    @property
    def work(self) -> Path:
        return self.staging / "work"

    def open(self, identity: dict[str, Any] | None = None, restart: bool = False) -> Output:
        """Create (or reuse) the staging area. A leftover one from a killed run is reused when it was made by the
        same verb with the same `identity` (everything that changes the result); otherwise refused, or discarded
        with `restart`."""
        staging = self.staging
        record = {"verb": self.verb, "out": str(self.path.resolve()), "identity": _digest(identity)}
        if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
            raise StructpruneError(f"{staging}: exists and is not structprune's staging folder; move it away")
        if staging.exists():
            saved = _read_record(staging)
            if saved is None:
                if any(staging.iterdir()):
                    raise StructpruneError(f"{staging}: exists and is not structprune's staging folder; move it away")
            elif restart:
                log.info("discarding the staging folder %s (restart)", staging)
                shutil.rmtree(staging)
            elif saved.get("verb") != self.verb or saved.get("identity") != record["identity"]:
                raise StructpruneError(
                    f"{self.path}: an interrupted `{saved.get('verb')}` with other settings or inputs left {staging}; "
                    "rerun that command to resume it, or pass --restart to discard it")
            else:
                log.info("resuming from the staging folder %s", staging)
        try:
            staging.mkdir(parents=True, exist_ok=True)
            _write_record(staging, record)
        except OSError as exc:
            raise StructpruneError(f"{self.path}: cannot write here ({exc.strerror or exc})") from None
        if self.work.exists():  # a half-written folder from a killed run: never published, rebuilt from checkpoints
            shutil.rmtree(self.work)
        self.opened = True
        return self

    @contextmanager
    def publish(self) -> Iterator[Path]:
        """Yield an empty folder to write the output into; on success it becomes the destination and the staging
        area is removed. On any exception the folder is removed, checkpoints stay, the destination is untouched."""
        if not self.opened:
            self.open()
        work = self.work
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        try:
            yield work
            self._replace_destination(work)
        except BaseException:
            self.abandon()
            raise
        self.discard()

    @contextmanager
    def staged(self, identity: dict[str, Any] | None = None, restart: bool = False) -> Iterator[Output]:
        """`open` for a block of work that ends in `publish`: if the block fails, what it left that cannot be
        resumed goes (see `abandon`)."""
        self.open(identity, restart)
        try:
            yield self
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """After a failure: remove the half-written folder, and the whole staging area unless it holds checkpoints
        to resume from."""
        shutil.rmtree(self.work, ignore_errors=True)
        if not (self.checkpoints.is_dir() and any(self.checkpoints.iterdir())):
            self.discard()

    def discard(self) -> None:
        """Remove the staging area (--restart: what an interrupted run left is not wanted)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.opened = False

    def _replace_destination(self, work: Path) -> None:
        out = self.path
        if out.exists() and any(out.iterdir()):
            _check_replaceable(out, self.verb, str(out), overwrite=True)  # re-checked: it may have changed meanwhile
            old = self.staging / "replaced"
            os.replace(out, old)
        os.replace(work, out)


def _check_replaceable(out: Path, verb: str, what: str, overwrite: bool, resume: bool = False) -> None:
    found = _verb_of(out)
    if found is None:
        raise StructpruneError(f"{what}: is a folder that structprune did not write, and not empty; "
                               "choose a new folder (nothing was changed)")
    if found != verb:
        raise StructpruneError(f"{what}: holds a `{found}` output, not a `{verb}` one; choose a new folder")
    foreign = foreign_entries(out)
    if foreign:
        raise StructpruneError(f"{what}: also holds files structprune did not write ({', '.join(foreign[:3])}"
                               f"{', ...' if len(foreign) > 3 else ''}); choose a new folder")
    if not (overwrite or resume):
        raise StructpruneError(f"{what}: already holds a `{verb}` output; pass --overwrite to replace it")


def claim_folder(out: str | Path, verb: str, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 resume: bool = False) -> Output:
    """Check, before any work, that `verb` may write the folder `out` (see the module's policy); no side effect."""
    given = Path(out)
    what = str(given)
    if given.is_symlink():
        raise StructpruneError(f"{what}: is a symbolic link; give the folder itself")
    resolved = given.resolve()
    if resolved.name.endswith(STAGE_SUFFIX):
        raise StructpruneError(f"{what}: is a name structprune keeps for its staging folders; choose another")
    _refuse_around_inputs(resolved, inputs, what)
    if given.exists():
        if not given.is_dir():
            raise StructpruneError(f"{what}: exists and is not a folder; choose a new folder")
        if any(given.iterdir()):
            _check_replaceable(given, verb, what, overwrite, resume)
        if not os.access(given, os.W_OK | os.X_OK):
            raise StructpruneError(f"{what}: is not writable")
    _check_parent(resolved, what)
    return Output(path=given, verb=verb, overwrite=overwrite, resume=resume)


def claim_file(out: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Check that a file may be written at `out`: a new file, or an existing one when `overwrite` is given."""
    given = Path(out)
    what = str(given)
    resolved = given.resolve()
    if given.is_dir():
        raise StructpruneError(f"{what}: is a folder, not a file")
    for source in inputs:
        if _inside(resolved, Path(source).resolve()):
            raise StructpruneError(f"{what}: lies inside the input run {source}; write it elsewhere")
    if given.exists() and not overwrite:
        raise StructpruneError(f"{what}: exists; pass --overwrite to replace it")
    _check_parent(resolved, what)
    return given


def _digest(identity: dict[str, Any] | None) -> str | None:
    if identity is None:
        return None
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _read_record(staging: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((staging / STAGE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(staging: Path, record: dict[str, Any]) -> None:
    write_json_atomic(staging / STAGE_RECORD, record)


def fingerprint_files(*paths: str | Path) -> str:
    """A content hash of files, or of every file inside folders (sorted by relative path): what a resumed
    stage compares to know that its inputs did not change."""
    h = hashlib.sha256()
    for top in paths:
        top = Path(top)
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for file in files:
            h.update(str(file.relative_to(top) if file != top else file.name).encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()
