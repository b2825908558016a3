"""``hami demo`` as a user runs it: a subprocess that starts the embedded cluster and every role as
separate processes, places the demo pods and prints the table, ``hami why`` and the endpoints."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hami.cli import main as hami_main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
DEMO_TIMEOUT_S = 60.0
GPU_LINE = re.compile(r"^  GPU (\d+)\s+(\S+)\s+\[[#.]+\]\s+(\d+)/(\d+) MiB\s+cores\s+(\d+)/100%")
HOLDING_LINE = re.compile(r"^      - (\S+)(?: \[(\d)/(\d)\])?\s+(\d+) MiB\s+(\d+)% cores\s+(\S+)$")
NODE_LINE = re.compile(r"^(node-\d+): (\d+) x (.+) \((\d+) MiB\)$")
PID = re.compile(r"pid (\d+)")


def parse_table(text: str) -> dict[str, list[tuple[str, int, int, int, str]]]:
    """pod -> [(node, gpu index, MiB, cores %, state)] from the table's node/GPU/holding lines."""
    held: dict[str, list[tuple[str, int, int, int, str]]] = {}
    node, gpu = "", -1
    for line in text.splitlines():
        if m := NODE_LINE.match(line):
            node = m.group(1)
        elif m := GPU_LINE.match(line):
            gpu = int(m.group(1))
        elif m := HOLDING_LINE.match(line):
            pod, _, _, mib, cores, state = m.groups()
            held.setdefault(pod, []).append((node, gpu, int(mib), int(cores), state))
    return held


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes (the demo's children are reaped by the demo itself).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def removed(path: Path) -> bool:
    return not path.exists()


def children_of(demo_pid: int) -> list[int]:
    """Processes started by that demo (they carry its pid in HAMI_DEMO_PARENT_PID)."""
    marker = f"HAMI_DEMO_PARENT_PID={demo_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def run_demo(*args: str) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hami", "demo", *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEMO_TIMEOUT_S)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        pytest.fail(
            f"hami demo --once took over {DEMO_TIMEOUT_S:.0f}s; output:\n{out.decode()}\n{err.decode()}"
        )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


@pytest.fixture
def state() -> Iterator[Path]:
    """A short state directory (pytest's tmp_path is too deep for the nodes' Unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_demo_once_places_the_mix_explains_the_unfit_pod_and_cleans_up(state: Path) -> None:
    rc, out, err, _elapsed = await run_demo("--once", "--state-dir", str(state))
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"

    held = parse_table(out)
    # Fractional shares, each on one GPU; the spread-annotated replicas on three different nodes.
    for name in ("infer-1", "infer-2", "infer-3"):
        [(_, _, mib, cores, state_)] = held[f"default/{name}"]
        assert (mib, cores, state_) == (20000, 25, "Running")
    assert {held[f"default/infer-{i}"][0][0] for i in (1, 2, 3)} == {"node-1", "node-2", "node-3"}
    [(_, _, mib, cores, state_)] = held["default/notebook"]
    assert (mib, cores, state_) == (81559 // 4, 10, "Running")  # 25 % of an H100's 81559 MiB
    # The exclusive card: all its memory and cores, and nobody else on that GPU.
    [(node, gpu, mib, cores, _)] = held["default/train"]
    assert (mib, cores) == (81559, 100)
    assert [p for p, shares in held.items() if (node, gpu) in {(s[0], s[1]) for s in shares}] == [
        "default/train"
    ]
    # The two-GPU pod: two different GPUs of one node, 30000 MiB and 50 % on each.
    tp2 = held["default/vllm-tp2"]
    assert len(tp2) == 2 and tp2[0][0] == tp2[1][0] and tp2[0][1] != tp2[1][1]
    assert all((s[2], s[3], s[4]) == (30000, 50, "Running") for s in tp2)
    assert "- default/vllm-tp2 [1/2]" in out and "- default/vllm-tp2 [2/2]" in out
    assert "default/whole-node" not in held and "default/too-big" not in held

    # Every GPU line's totals are the sum of its holdings.
    assert "12 GPUs on 3 nodes" in out and "6 pods placed, 1 waiting" in out
    pending = out.split("Not placed (Pending):", 1)[1].split("Refused at admission:", 1)[0]
    assert "default/whole-node" in pending and "wants 4 GPUs, 100% cores each" in pending
    refused = out.split("Refused at admission:", 1)[1].split("$ hami why", 1)[0]
    assert "default/too-big" in refused
    assert 'admission webhook "vgpu.hami.io" denied the request' in refused
    assert "asks for 102000 MiB per NVIDIA device but the largest registered device has 81559 MiB" in refused

    # hami why for the pod that did not fit: every node, with the device-level reason.
    why = out.split("$ hami why default/whole-node", 1)[1].split("Where things are:", 1)[0]
    assert "Outcome: unschedulable - 0/3 nodes fit" in why
    assert "container 0 (main): 4 x NVIDIA, 100% of memory, 100 cores" in why
    for node in ("node-1", "node-2", "node-3"):
        assert re.search(rf"^  {node}: NodeUnfitPod", why, re.M), why
    assert re.search(r"free \d+ MiB < 81559 MiB", why)

    # Where the metrics and consoles are.
    where = out.split("Where things are:", 1)[1]
    assert re.search(r"scheduler\s+https://127\.0\.0\.1:\d+ ", where)
    # scheduler, 3 device plugins, 3 monitors
    assert len(re.findall(r"metrics http://127\.0\.0\.1:\d+/metrics", where)) == 7
    assert len(re.findall(r"aiomonitor: telnet 127\.0\.0\.1 \d+", where)) >= 3  # at least the monitors
    assert "MutatingWebhookConfiguration hami-webhook" in where

    # Stopped cleanly: every role process gone, the state directory removed.
    pids = [int(p) for p in PID.findall(where)]
    assert len(pids) == 7  # scheduler, 3 device plugins, 3 monitors
    assert not [p for p in pids if alive(p)]
    assert removed(state)
    assert out.rstrip().endswith("hami demo: stopped")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the role processes through /proc")
async def test_sigterm_while_starting_stops_every_role_and_removes_the_state(state: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hami", "demo", "--state-dir", str(state),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(children_of(proc.pid)) < 7:
            assert proc.returncode is None and time.monotonic() < deadline, "the roles did not start"
            await asyncio.sleep(0.1)
        started = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "hami demo: stopped" in out.decode()
    assert not [p for p in started if alive(p)]
    assert removed(state)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus-per-node", "1"], "--gpus-per-node: must be 2..16"),
        (["--nodes", "0"], "--nodes: must be 1..10"),
        (["--refresh", "0"], "--refresh: must be > 0"),
    ],
)
def test_bad_flags_fail_before_starting_anything(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hami_main(["demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_used_state_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert hami_main(["demo", "--once", "--state-dir", str(tmp_path)]) == 2
    assert "must be empty or not exist" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
