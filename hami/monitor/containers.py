"""The containers directory: ``<root>/<pod-uid>_<container>/<uuid>.cache`` (node spec §7.2).

One :class:`ContainerScanner` owns the open region files. ``scan()`` is blocking (directory
listing, pread, ``rm -rf``) and runs in a worker thread; it is never called concurrently.

Rules, as HAMi 2.8 with HEAD's fixes where 2.8 crashes:

* non-directories, symlinks and names without ``_`` are ignored (2.8 panics on the latter);
* a directory whose pod is not on this node is left alone while younger than the grace period
  (the informer may lag the device plugin) and removed afterwards, but only when the pod source
  has synced: an unsynced or failing source never causes a deletion;
* a directory holds at most two entries (the ``libvgpu.so`` mount point and the cache file); the
  first name containing ``.cache`` and not ``libvgpu.so`` is the region; none yet = nothing to read;
* a loaded region whose cache file vanished or was replaced (container restart) is reloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hami.monitor.region import RegionError, RegionFile, RegionNotReady, SharedRegion

logger = logging.getLogger(__name__)

MAX_ENTRIES = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerReading:
    directory: str  # "<pod-uid>_<container>"
    pod_uid: str
    container: str
    region: SharedRegion


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanResult:
    readings: tuple[ContainerReading, ...] = ()
    removed: tuple[str, ...] = ()  # directories deleted in this scan
    waiting: tuple[str, ...] = ()  # no region yet (no CUDA/NVML init so far)
    unreadable: Mapping[str, str] = field(default_factory=dict)  # directory -> reason


def split_directory_name(name: str) -> tuple[str, str] | None:
    """``<pod-uid>_<container>`` → (uid, container); None for names the monitor must not touch."""
    uid, sep, container = name.partition("_")
    if not sep or not uid or not container:
        return None
    return uid, container


@dataclass(slots=True)
class _Loaded:
    region: RegionFile
    cache_path: Path
    inode: int


class ContainerScanner:
    def __init__(self, root: Path, *, grace_seconds: float) -> None:
        self.root = root
        self.grace_seconds = grace_seconds
        self._loaded: dict[str, _Loaded] = {}
        self._reported: dict[str, str] = {}  # directory -> last logged problem (log once per change)

    @property
    def loaded(self) -> Mapping[str, RegionFile]:
        return {name: entry.region for name, entry in self._loaded.items()}

    def scan(self, live_pods: Mapping[str, object] | None, now: float) -> ScanResult:
        """One pass. ``live_pods`` maps pod UIDs on this node (None = source not synced yet);
        ``now`` is wall-clock seconds, compared with directory mtimes for the grace period."""
        readings: list[ContainerReading] = []
        removed: list[str] = []
        waiting: list[str] = []
        unreadable: dict[str, str] = {}
        seen: set[str] = set()
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        except OSError as e:
            logger.warning("cannot list %s: %s", self.root, e)
            entries = []
        for entry in entries:
            parts = split_directory_name(entry.name)
            if parts is None or not entry.is_dir(follow_symlinks=False):
                continue
            uid, container = parts
            seen.add(entry.name)
            if live_pods is not None and uid not in live_pods:
                if self._expired(entry, now):
                    self._remove(entry.name)
                    removed.append(entry.name)
                continue
            try:
                region = self._read(entry.name)
            except RegionNotReady:
                waiting.append(entry.name)
                continue
            except RegionError as e:
                unreadable[entry.name] = e.reason
                self._report(entry.name, str(e))
                continue
            if region is None:
                waiting.append(entry.name)
                continue
            self._reported.pop(entry.name, None)
            readings.append(
                ContainerReading(directory=entry.name, pod_uid=uid, container=container, region=region)
            )
        for gone in set(self._loaded) - seen:
            self._forget(gone)
        return ScanResult(
            readings=tuple(readings), removed=tuple(removed), waiting=tuple(waiting), unreadable=unreadable
        )

    def close(self) -> None:
        for name in list(self._loaded):
            self._forget(name)

    # -- internals ------------------------------------------------------------------------------

    def _expired(self, entry: os.DirEntry[str], now: float) -> bool:
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            return False
        return mtime <= now - self.grace_seconds

    def _remove(self, name: str) -> None:
        self._forget(name)
        path = self.root / name
        try:
            # Never follow a link out of the containers directory.
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path)
                logger.info("removed stale container directory %s", path)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("cannot remove stale container directory %s: %s", path, e)

    def _forget(self, name: str) -> None:
        entry = self._loaded.pop(name, None)
        if entry is not None:
            entry.region.close()
        self._reported.pop(name, None)

    def _report(self, name: str, problem: str) -> None:
        if self._reported.get(name) != problem:
            self._reported[name] = problem
            logger.warning("%s", problem)

    def _cache_file(self, name: str) -> Path | None:
        directory = self.root / name
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise RegionError(str(directory), f"cannot list: {e.strerror or e}") from e
        if len(names) > MAX_ENTRIES:
            raise RegionError(
                str(directory), f"cache num not matched: {len(names)} entries, at most {MAX_ENTRIES}"
            )
        for candidate in names:
            if ".cache" in candidate and "libvgpu.so" not in candidate:
                return directory / candidate
        return None

    def _read(self, name: str) -> SharedRegion | None:
        cache = self._cache_file(name)
        entry = self._loaded.get(name)
        if cache is None:
            if entry is not None:
                self._forget(name)
            return None
        try:
            inode = os.stat(cache).st_ino
        except OSError as e:
            self._forget(name)
            raise RegionError(str(cache), f"cannot stat: {e.strerror or e}") from e
        if entry is not None and (entry.cache_path != cache or entry.inode != inode):
            self._forget(name)
            entry = None
        if entry is None:
            region_file = RegionFile.open(cache)
            entry = _Loaded(region=region_file, cache_path=cache, inode=inode)
            self._loaded[name] = entry
            logger.info("loaded shared region %s (version %d.%d)", cache, *region_file.version)
        try:
            return entry.region.read()
        except RegionError:
            self._forget(name)
            raise
