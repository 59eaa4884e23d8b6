"""The model versions a scoring server holds, and the one new sessions get.

    models/                 moodstream server --models models/
      2026-05-01/           a checkpoint folder, as `moodstream train` writes it
      2026-06-12/
      current               one line: the folder (or model version) new sessions get

The server looks at the folder every `poll_seconds`: a new checkpoint folder is
loaded while the others keep serving, a folder that cannot be loaded is refused
with one logged line (and tried again once its files change), and a changed
`current` takes effect for sessions that start from then on. A session stays on
the version it started under (recorded in Redis, so every replica agrees) until
it ends. A removed folder's version takes no new streams; it is unloaded once
its open streams have closed. The current version's folder removed keeps
serving (new sessions need some version) until `current` names another, and
then retires the same way. Versions whose encoders are identical (same
weights and encoder settings: `encoder_fingerprint`) share one loaded encoder
and one batching worker, so such a version costs only its session head.
Folders whose names start with "." are ignored (copy a checkpoint in under a
dot-name, then rename it, and the server never sees it half-written).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("moodstream.server.models")

CURRENT_FILE = "current"
POLL_SECONDS = 2.0


class RepositoryError(ValueError):
    """The model folder cannot be served (nothing loadable, or no `current` where one is needed)."""


@dataclass(eq=False)
class ServedVersion:
    """One loaded model version: its model (config), incremental scorer, encoder worker and key space."""

    model_version: str
    model: Any
    scorer: Any
    encoder: Any          # a started BatchingEncoder, shared by versions of the same encoder
    encoder_id: str
    store: Any            # the SessionStore of this version's keys
    folder: str | None    # None: given directly (--checkpoint)
    streams: int = 0      # open streams on this version
    retired: bool = False

    @property
    def config(self):
        return self.model.config


def folder_signature(folder: Path) -> tuple:
    """What changes when a checkpoint folder's files change (a changed folder is loaded again)."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    except OSError:
        return ()


class ModelRepository:
    """Args:
        make_encoder: model -> BatchingEncoder (not started); called once per distinct encoder.
        make_store: model version -> SessionStore.
        device: where models run.
        folder: the model folder (--models); None with `model`.
        model: one ready model (--checkpoint, tests); the repository then holds it alone and never polls.
    """

    def __init__(self, *, make_encoder: Callable[[Any], Any], make_store: Callable[[str], Any], device: Any = None,
                 folder: str | Path | None = None, model: Any = None, poll_seconds: float = POLL_SECONDS) -> None:
        if (folder is None) == (model is None):
            raise ValueError("give a model folder or a model")
        self.folder = Path(folder) if folder is not None else None
        self._model = model
        self._make_encoder = make_encoder
        self._make_store = make_store
        self._device = device
        self.poll_seconds = poll_seconds
        self.versions: dict[str, ServedVersion] = {}
        self.current: str | None = None
        self._folders: dict[str, tuple[tuple, str | None]] = {}   # name -> (signature, version or None: refused)
        self._encoders: dict[str, tuple[Any, Any]] = {}           # encoder id -> (model owning it, encoder)
        self._retiring: list[ServedVersion] = []
        self._current_text: str | None = None
        self._watch: asyncio.Task | None = None

    # ------------------------------------------------------------ questions
    def held(self) -> list[str]:
        """Versions that take streams, the current one first."""
        return sorted(self.versions, key=lambda version: (version != self.current, version))

    def get(self, version: str) -> ServedVersion | None:
        return self.versions.get(version)

    def served_current(self) -> ServedVersion:
        return self.versions[self.current]

    def encoders(self) -> list[Any]:
        return [encoder for _, encoder in self._encoders.values()]

    # ------------------------------------------------------------ streams
    def acquire(self, version: str) -> ServedVersion | None:
        served = self.versions.get(version)
        if served is not None:
            served.streams += 1
        return served

    async def release(self, served: ServedVersion) -> None:
        served.streams -= 1
        if served.retired and served.streams == 0:
            await self._unload(served)

    # ------------------------------------------------------------ life cycle
    async def start(self) -> None:
        if self._model is not None:
            served = await self._serve(self._model, None)
            self.current = served.model_version
            return
        if not self.folder.is_dir():
            raise RepositoryError(f"--models {self.folder} is not a folder: make one with a checkpoint folder in it")
        await self.refresh()
        if not self.versions:
            raise RepositoryError(f"--models {self.folder} holds no loadable checkpoint folder "
                                  "(one folder per checkpoint, as `moodstream train` writes it)")
        if self.current is None:
            if self._current_text:
                raise RepositoryError(f"{self.folder / CURRENT_FILE} names {self._current_text!r}, which is neither a "
                                      f"loadable folder nor a version there (it holds {', '.join(self.held())})")
            if len(self.versions) > 1:
                raise RepositoryError(f"--models {self.folder} holds {len(self.versions)} versions: write the "
                                      f"folder name new sessions get into {self.folder / CURRENT_FILE}")
            self.current = next(iter(self.versions))
        self._watch = asyncio.create_task(self._poll_forever(), name="model-folder-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except BaseException:
                pass
            self._watch = None
        for _, encoder in list(self._encoders.values()):
            await encoder.stop()
        self._encoders.clear()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except Exception:  # never let one bad look end the watch: the next may succeed
                log.exception("checking the model folder %s failed", self.folder)

    async def refresh(self) -> None:
        """Load new or changed folders, retire removed ones, and read `current`."""
        present = {}
        for entry in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if entry.is_dir() and not entry.name.startswith("."):
                present[entry.name] = folder_signature(entry)
        for name, signature in present.items():
            known = self._folders.get(name)
            if known is not None and known[0] == signature:
                continue
            self._folders[name] = (signature, await self._load_folder(name))
        for name in sorted(set(self._folders) - set(present)):
            _, version = self._folders.pop(name)
            if version is not None and version not in self._named_versions():
                await self._retire(version, f"its folder {name} was removed")
        previous = self._read_current()
        if previous is not None and previous in self.versions and self.versions[previous].folder is not None \
                and previous not in self._named_versions():
            # Its folder went while it was current, so it was kept serving; now that `current` names
            # another version it retires as any removed version does.
            await self._retire(previous, "its folder was removed and current now names another version")

    def _named_versions(self) -> set[str]:
        return {version for _, version in self._folders.values() if version is not None}

    async def _load_folder(self, name: str) -> str | None:
        path = self.folder / name
        try:
            model = await asyncio.to_thread(self._load_model, path)
            version = model.model_version
            if version in self.versions:
                log.info("model folder %s holds model %s, already served", name, version)
                return version
            await self._serve(model, name)
            return version
        except Exception as error:  # any failure refuses this folder only; the others keep serving
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.error("model folder %s refused: %s", path, reason)
            return None

    def _load_model(self, path: Path):
        from moodstream.model import ScreeningModel

        return ScreeningModel.from_pretrained(path).to(self._device or "cpu").eval()

    async def _serve(self, model, folder: str | None) -> ServedVersion:
        from moodstream.model.checkpoint import encoder_fingerprint

        version = model.model_version
        encoder_id = await asyncio.to_thread(encoder_fingerprint, model)
        shared = self._encoders.get(encoder_id)
        if shared is not None:
            owner, encoder = shared
            # One copy of the encoder's weights: the new model's backbone and segment head go.
            model.backbone, model.segment_head = owner.backbone, owner.segment_head
        else:
            encoder = self._make_encoder(model)
            await encoder.start()
            self._encoders[encoder_id] = (model, encoder)
        served = ServedVersion(model_version=version, model=model, scorer=model.incremental_scorer(version),
                               encoder=encoder, encoder_id=encoder_id, store=self._make_store(version),
                               folder=folder)
        self.versions[version] = served
        log.info("model %s loaded%s (%s encoder %s)", version, f" from {folder}" if folder else "",
                 "shares the" if shared else "with its own", encoder_id)
        return served

    async def _retire(self, version: str, why: str) -> None:
        if version == self.current:
            log.error("model %s is current but %s: it keeps serving until %s names another version",
                      version, why, self.folder / CURRENT_FILE)
            return
        served = self.versions.pop(version)
        served.retired = True
        log.info("model %s no longer takes streams: %s", version, why)
        if served.streams == 0:
            await self._unload(served)
        else:
            self._retiring.append(served)

    async def _unload(self, served: ServedVersion) -> None:
        if served in self._retiring:
            self._retiring.remove(served)
        users = [s for s in (*self.versions.values(), *self._retiring) if s.encoder_id == served.encoder_id]
        if not users and served.encoder_id in self._encoders:
            _, encoder = self._encoders.pop(served.encoder_id)
            await encoder.stop()
        elif users and self._encoders.get(served.encoder_id, (None,))[0] is served.model:
            self._encoders[served.encoder_id] = (users[0].model, self._encoders[served.encoder_id][1])
        log.info("model %s unloaded", served.model_version)

    def _read_current(self) -> str | None:
        """Read `current`; returns the version it named before when that changed, else None."""
        path = self.folder / CURRENT_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as error:
            log.error("cannot read %s (%s); new sessions keep model %s", path, error, self.current)
            return None
        if not text:
            if self.current is None and len(self.versions) == 1:
                self.current = next(iter(self.versions))
            return None
        version = self._resolve(text)
        if version is None:
            if text != self._current_text:
                log.error("%s names %r, which is neither a served model folder nor a served model version (%s); "
                          "new sessions keep model %s", path, text, ", ".join(self.held()) or "none", self.current)
            self._current_text = text
            return None
        self._current_text = text
        if version != self.current:
            log.info("new sessions now get model %s (%s; was %s)", version, text, self.current)
            previous, self.current = self.current, version
            return previous
        return None

    def _resolve(self, text: str) -> str | None:
        if text in self.versions:
            return text
        known = self._folders.get(text)
        if known is not None and known[1] in self.versions:
            return known[1]
        return None
