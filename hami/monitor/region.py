"""HAMi-core shared-region files (``<uuid>.cache``): pure parsing plus a thin pread/pwrite reader/writer.

Layout: hami-core-contract.md ("Shared region file layout", version 1.2) and hami-node-spec.md §7.3
(version 1.1, HAMi 2.8's HAMi-core). Both versions share one layout (struct 2008952 bytes, file one
byte longer); 1.2 adds a per-slot seqlock at slot offset 1936 and a second semaphore at 2008920
where 1.1 has unused bytes. Anything else (the legacy v0 layout, other majors/minors, short files,
values out of range) is refused with a :class:`RegionError` naming the file and what was wrong.

Parsing works on any buffer (bytes in tests) or on a live file read piecewise with ``os.pread``.
The live file is deliberately never mapped: anyone may truncate it in place (a container's
``rm``, a re-created region, a bad actor in a pod) and touching a mapped page past the new end
kills the whole monitor with SIGBUS, whereas a short ``pread`` is just a :class:`RegionError`
for that one file. Only the header, the tail and the ``proc_num`` used slots are read (a few
KiB, not the 2 MB file). On a live file the seqlock matters: a slot's ``used`` counters are
read only while its seqlock is even and unchanged across the read; after ``seqlock_retries``
failed attempts the last values are kept and the slot is flagged ``consistent=False`` (a writer
killed mid-update leaves the lock odd forever, and one stuck slot must not hide the whole
container).

Reading a file is blocking I/O: the monitor calls these functions through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hami.core.errors import HamiError

MAGIC: Final = 19920718
MAX_DEVICES: Final = 16
MAX_PROCS: Final = 1024
UUID_FIELD: Final = 96
STRUCT_SIZE: Final = 2008952
FILE_SIZE: Final = STRUCT_SIZE + 1  # the creator seeks to sizeof(region) and writes one NUL
V0_FILE_SIZE: Final = 1197897  # legacy layout without version fields (not supported)
SUPPORTED_VERSIONS: Final = frozenset({(1, 1), (1, 2)})

# Header offsets.
OFF_MAGIC: Final = 0
OFF_MAJOR: Final = 4
OFF_MINOR: Final = 8
OFF_UUIDS: Final = 64
OFF_PROCS: Final = 1856
OFF_PROC_NUM: Final = 2008896
OFF_UTILIZATION_SWITCH: Final = 2008900
OFF_RECENT_KERNEL: Final = 2008904
OFF_PRIORITY: Final = 2008908
OFF_LAST_KERNEL_TIME: Final = 2008912
OFF_SEM_POSTINIT: Final = 2008920

SLOT_SIZE: Final = 1960
SLOT_OFF_SEQLOCK: Final = 1936
DEFAULT_SEQLOCK_RETRIES: Final = 64

# initialized_flag, major, minor, sm_init_flag, owner_pid, sem, device_num, uuids, limit[16], sm_limit[16]
_HEADER = struct.Struct("<iIIiQ32sQ1536s16Q16Q")
# proc_num, utilization_switch, recent_kernel, priority, last_kernel_time, sem_postinit
_TAIL = struct.Struct("<iiiiQ32s")
# pid, hostpid, used[16] (8 u64 each), monitorused[16], device_util[16] (6 u64 each), status (+pad),
# seqlock, unused[2]
_SLOT = struct.Struct("<ii128Q16Q96Qi4xQ2Q")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_SEM = struct.Struct("<QI")

assert _HEADER.size == OFF_PROCS
assert _TAIL.size == STRUCT_SIZE - OFF_PROC_NUM
assert _SLOT.size == SLOT_SIZE
assert OFF_PROCS + MAX_PROCS * SLOT_SIZE == OFF_PROC_NUM

RegionBuffer = bytes | bytearray | memoryview
# read_at(offset, size) -> exactly ``size`` bytes, or raises RegionError (a short read: truncated).
_ReadAt = Callable[[int, int], bytes]


class RegionError(HamiError):
    """A shared-region file could not be used; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"shared region {path}: {reason}")


class RegionNotReady(RegionError):
    """The file exists but no process has initialised it yet (empty, or magic still 0)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SemaphoreState:
    """A glibc ``sem_t`` as stored in the region (value/waiters/private), for diagnostics only."""

    value: int
    nwaiters: int
    private: int
    raw: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceMemory:
    context_size: int
    module_size: int
    data_size: int
    offset: int
    total: int  # what HAMi-core checks against the limit: context + module + data


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceUtil:
    dec_util: int
    enc_util: int
    sm_util: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcSlot:
    index: int
    pid: int  # in the process's own PID namespace; 0 = exited
    hostpid: int
    used: tuple[DeviceMemory, ...]  # 16, per container device index
    monitorused: tuple[int, ...]  # 16
    device_util: tuple[DeviceUtil, ...]  # 16
    status: int  # 1 running, 2 suspended, 0 exited
    seqlock: int | None  # None for version 1.1 (no seqlock there)
    consistent: bool = True  # False: the seqlock never settled while reading `used`

    @property
    def exited(self) -> bool:
        # HAMi-core's exit handler zeroes pid but leaves counters until lazy cleanup.
        return self.pid == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedRegion:
    """One decoded region; ``procs`` holds the first ``proc_num`` slots (live and exited)."""

    source: str
    file_size: int
    initialized_flag: int
    major_version: int
    minor_version: int
    sm_init_flag: int
    owner_pid: int
    sem: SemaphoreState
    device_num: int
    uuids: tuple[str, ...]  # 16, NULs stripped; "" = slot unused
    limit: tuple[int, ...]  # 16, bytes; 0 = unlimited
    sm_limit: tuple[int, ...]  # 16, percent; 100 = unlimited
    proc_num: int
    utilization_switch: int
    recent_kernel: int
    priority: int
    last_kernel_time: int
    sem_postinit: SemaphoreState | None  # None for version 1.1 (unused bytes there)
    procs: tuple[ProcSlot, ...]

    @property
    def version(self) -> tuple[int, int]:
        return (self.major_version, self.minor_version)

    @property
    def live_procs(self) -> tuple[ProcSlot, ...]:
        return tuple(p for p in self.procs if not p.exited)

    def valid_device_uuids(self) -> tuple[str, ...]:
        """UUIDs of the 16 slots whose field is non-empty, in slot order (feedback loop's view)."""
        return tuple(u for u in self.uuids if u)

    def memory_used(self, device: int) -> DeviceMemory:
        """Per-type usage of container device ``device`` summed over live slots (pid != 0)."""
        context = module = data = offset = total = 0
        for proc in self.procs:
            if proc.exited:
                continue
            m = proc.used[device]
            context += m.context_size
            module += m.module_size
            data += m.data_size
            offset += m.offset
            total += m.total
        return DeviceMemory(
            context_size=context, module_size=module, data_size=data, offset=offset, total=total
        )

    def sm_util(self, device: int) -> int:
        return sum(p.device_util[device].sm_util for p in self.procs if not p.exited)


def _semaphore(raw: bytes) -> SemaphoreState:
    data, private = _SEM.unpack_from(raw, 0)
    return SemaphoreState(value=data & 0xFFFFFFFF, nwaiters=data >> 32, private=private, raw=bytes(raw))


def _uuid(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _buffer_reader(buf: RegionBuffer) -> _ReadAt:
    view = memoryview(buf)

    def read_at(offset: int, size: int) -> bytes:
        return bytes(view[offset : offset + size])

    return read_at


def check_header(buf: RegionBuffer, source: str) -> tuple[int, int]:
    """Validate size, magic and version; return ``(major, minor)`` or raise :class:`RegionError`."""
    return _check_header(len(buf), _buffer_reader(buf), source)


def _check_header(size: int, read_at: _ReadAt, source: str) -> tuple[int, int]:
    if size == 0:
        raise RegionNotReady(source, "file is empty (no process has created the region yet)")
    if size == V0_FILE_SIZE:
        raise RegionError(
            source,
            f"legacy v0 region layout ({V0_FILE_SIZE} bytes) is not supported; only versions 1.1 and 1.2",
        )
    if size < OFF_MINOR + 4:
        raise RegionError(source, f"truncated: {size} bytes, too short for the region header")
    head = read_at(0, OFF_MINOR + 4)
    (magic,) = _I32.unpack_from(head, OFF_MAGIC)
    if magic != MAGIC:
        if magic == 0 and size >= STRUCT_SIZE:
            raise RegionNotReady(source, "not initialised yet (initialized_flag is 0)")
        raise RegionError(source, f"bad initialized_flag {magic}, expected {MAGIC}: not a HAMi-core region")
    (major,) = _U32.unpack_from(head, OFF_MAJOR)
    (minor,) = _U32.unpack_from(head, OFF_MINOR)
    if (major, minor) not in SUPPORTED_VERSIONS:
        raise RegionError(source, f"unsupported region version {major}.{minor}; supported: 1.1 and 1.2")
    if size < STRUCT_SIZE:
        raise RegionError(
            source,
            f"truncated: {size} bytes, a version {major}.{minor} region needs {STRUCT_SIZE} "
            f"(file is {FILE_SIZE})",
        )
    return major, minor


def _slot(
    read_at: _ReadAt,
    index: int,
    *,
    seqlocked: bool,
    retries: int,
    on_retry: Callable[[int], None] | None,
) -> ProcSlot:
    off = OFF_PROCS + index * SLOT_SIZE
    consistent = True
    if seqlocked:
        # Seqlock discipline: read only while even and unchanged across the read.
        for _ in range(max(retries, 1)):
            (before,) = _U64.unpack(read_at(off + SLOT_OFF_SEQLOCK, _U64.size))
            if not before & 1:
                fields = _SLOT.unpack(read_at(off, SLOT_SIZE))
                (after,) = _U64.unpack(read_at(off + SLOT_OFF_SEQLOCK, _U64.size))
                if after == before:
                    break
            if on_retry is not None:
                on_retry(index)
        else:
            fields = _SLOT.unpack(read_at(off, SLOT_SIZE))
            consistent = False
    else:
        fields = _SLOT.unpack(read_at(off, SLOT_SIZE))
    pid, hostpid = fields[0], fields[1]
    used_raw = fields[2:130]
    monitorused = tuple(fields[130:146])
    util_raw = fields[146:242]
    status, seqlock = fields[242], fields[243]
    used = tuple(
        DeviceMemory(
            context_size=used_raw[8 * d],
            module_size=used_raw[8 * d + 1],
            data_size=used_raw[8 * d + 2],
            offset=used_raw[8 * d + 3],
            total=used_raw[8 * d + 4],
        )
        for d in range(MAX_DEVICES)
    )
    util = tuple(
        DeviceUtil(dec_util=util_raw[6 * d], enc_util=util_raw[6 * d + 1], sm_util=util_raw[6 * d + 2])
        for d in range(MAX_DEVICES)
    )
    return ProcSlot(
        index=index,
        pid=pid,
        hostpid=hostpid,
        used=used,
        monitorused=monitorused,
        device_util=util,
        status=status,
        seqlock=seqlock if seqlocked else None,
        consistent=consistent,
    )


def parse_region(
    buf: RegionBuffer,
    *,
    source: str,
    file_size: int | None = None,
    seqlock_retries: int = DEFAULT_SEQLOCK_RETRIES,
    on_retry: Callable[[int], None] | None = None,
) -> SharedRegion:
    """Decode a region from ``buf``; ``source`` names it in errors.

    ``on_retry(slot_index)`` is called after each failed seqlock attempt (a test seam; the monitor
    passes nothing and simply spins, writers hold the lock for a few stores only).
    """
    return _parse(
        len(buf),
        _buffer_reader(buf),
        source=source,
        file_size=file_size,
        seqlock_retries=seqlock_retries,
        on_retry=on_retry,
    )


def _parse(
    size: int,
    read_at: _ReadAt,
    *,
    source: str,
    file_size: int | None,
    seqlock_retries: int,
    on_retry: Callable[[int], None] | None,
) -> SharedRegion:
    major, minor = _check_header(size, read_at, source)
    (
        magic,
        _major,
        _minor,
        sm_init_flag,
        owner_pid,
        sem_raw,
        device_num,
        uuids_raw,
        *limits_and_sm,
    ) = _HEADER.unpack(read_at(0, _HEADER.size))
    proc_num, utilization_switch, recent_kernel, priority, last_kernel_time, postinit_raw = _TAIL.unpack(
        read_at(OFF_PROC_NUM, _TAIL.size)
    )
    if device_num > MAX_DEVICES:
        raise RegionError(source, f"device_num {device_num} exceeds {MAX_DEVICES}: corrupted region")
    if not 0 <= proc_num <= MAX_PROCS:
        raise RegionError(source, f"proc_num {proc_num} outside 0..{MAX_PROCS}: corrupted region")
    seqlocked = (major, minor) >= (1, 2)
    procs = tuple(
        _slot(read_at, k, seqlocked=seqlocked, retries=seqlock_retries, on_retry=on_retry)
        for k in range(proc_num)
    )
    return SharedRegion(
        source=source,
        file_size=size if file_size is None else file_size,
        initialized_flag=magic,
        major_version=major,
        minor_version=minor,
        sm_init_flag=sm_init_flag,
        owner_pid=owner_pid,
        sem=_semaphore(sem_raw),
        device_num=device_num,
        uuids=tuple(_uuid(uuids_raw[i * UUID_FIELD : (i + 1) * UUID_FIELD]) for i in range(MAX_DEVICES)),
        limit=tuple(limits_and_sm[:MAX_DEVICES]),
        sm_limit=tuple(limits_and_sm[MAX_DEVICES:]),
        proc_num=proc_num,
        utilization_switch=utilization_switch,
        recent_kernel=recent_kernel,
        priority=priority,
        last_kernel_time=last_kernel_time,
        sem_postinit=_semaphore(postinit_raw) if seqlocked else None,
        procs=procs,
    )


class RegionFile:
    """An open, validated region file read with ``pread`` and written with ``pwrite``.

    Never mapped (module docstring): the file can shrink under us at any moment, and every read
    checks it got all it asked for, so truncation is this file's :class:`RegionError`, never a
    SIGBUS. Writes are plain aligned 32-bit stores without the region semaphore, exactly as HAMi
    2.8's monitor does (HAMi-core reads these fields without locking too; its ``MAP_SHARED``
    mapping shares the page cache ``pwrite`` updates). Blocking: use from a thread.
    """

    def __init__(self, path: Path, fd: int, *, writable: bool, version: tuple[int, int]) -> None:
        self.path = path
        self.writable = writable
        self.version = version
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: Path, *, writable: bool = True) -> RegionFile:
        """Open ``path`` and validate it; fall back to read-only when it cannot be opened for writing."""
        source = str(path)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            if writable and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return cls.open(path, writable=False)
            raise RegionError(source, f"cannot open: {e.strerror or e}") from e
        region = cls(path, fd, writable=writable, version=(0, 0))
        try:
            region.version = _check_header(region._size(), region._read_at, source)
        except BaseException:
            region.close()
            raise
        return region

    def _open_fd(self) -> int:
        if self._fd is None:
            raise RegionError(str(self.path), "region file is closed")
        return self._fd

    def _size(self) -> int:
        try:
            return os.fstat(self._open_fd()).st_size
        except OSError as e:
            raise RegionError(str(self.path), f"cannot stat: {e.strerror or e}") from e

    def _read_at(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._open_fd(), size, offset)
        except OSError as e:
            raise RegionError(str(self.path), f"cannot read: {e.strerror or e}") from e
        if len(data) != size:
            raise RegionError(
                str(self.path),
                f"truncated while being read: {size} bytes wanted at offset {offset}, got {len(data)} "
                f"(file is now {self._size()} bytes, a region needs {STRUCT_SIZE})",
            )
        return data

    def read(self, *, seqlock_retries: int = DEFAULT_SEQLOCK_RETRIES) -> SharedRegion:
        return _parse(
            self._size(),
            self._read_at,
            source=str(self.path),
            file_size=None,
            seqlock_retries=seqlock_retries,
            on_retry=None,
        )

    def _read_i32(self, offset: int) -> int:
        return int(_I32.unpack(self._read_at(offset, _I32.size))[0])

    def read_recent_kernel(self) -> int:
        return self._read_i32(OFF_RECENT_KERNEL)

    def read_utilization_switch(self) -> int:
        return self._read_i32(OFF_UTILIZATION_SWITCH)

    def read_priority(self) -> int:
        return self._read_i32(OFF_PRIORITY)

    def read_device_uuids(self) -> tuple[str, ...]:
        """Non-empty UUID fields in slot order (what the feedback loop calls the region's devices)."""
        raw = self._read_at(OFF_UUIDS, MAX_DEVICES * UUID_FIELD)
        uuids = (_uuid(raw[i * UUID_FIELD : (i + 1) * UUID_FIELD]) for i in range(MAX_DEVICES))
        return tuple(u for u in uuids if u)

    def write_recent_kernel(self, value: int) -> None:
        self._write_i32(OFF_RECENT_KERNEL, value)

    def write_utilization_switch(self, value: int) -> None:
        self._write_i32(OFF_UTILIZATION_SWITCH, value)

    def _write_i32(self, offset: int, value: int) -> None:
        source = str(self.path)
        if not self.writable:
            raise RegionError(source, "opened read-only; cannot write")
        # pwrite past the end would grow a truncated file back (sparse) behind its owner's back.
        size = self._size()
        if size < STRUCT_SIZE:
            raise RegionError(source, f"truncated to {size} bytes; not writing offset {offset}")
        try:
            written = os.pwrite(self._open_fd(), _I32.pack(value), offset)
        except OSError as e:
            raise RegionError(source, f"cannot write: {e.strerror or e}") from e
        if written != _I32.size:
            raise RegionError(source, f"short write at offset {offset}: {written} of {_I32.size} bytes")

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RegionFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_region_file(path: Path, *, seqlock_retries: int = DEFAULT_SEQLOCK_RETRIES) -> SharedRegion:
    """One-shot read of ``path`` (read live, so the seqlock retries see concurrent writers)."""
    with RegionFile.open(path, writable=False) as region:
        return region.read(seqlock_retries=seqlock_retries)
