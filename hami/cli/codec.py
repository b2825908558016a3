"""``hami codec decode --key K --value V``: decode a HAMi annotation value and print it as JSON.

Handy against a live cluster::

    hami codec decode --key hami.io/vgpu-devices-allocated \\
        --value "$(kubectl get pod p -o jsonpath='{.metadata.annotations.hami\\.io/vgpu-devices-allocated}')"

A value that cannot be decoded prints the error on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final

from hami.core import annotations as codecs
from hami.core import keys
from hami.core.errors import DecodeError

EXIT_DECODE_ERROR: Final = 2


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _pod_devices(v28: bool) -> Callable[[str, str], object]:
    def decode(key: str, value: str) -> object:
        if v28:
            return codecs.decode_pod_single_device_v28(value)
        return codecs.decode_pod_single_device(value, key=key)

    return decode


def _decoder_for(key: str, *, v28: bool) -> Callable[[str, str], object] | None:
    """The decoder for an annotation key; vendor variants are recognised by their key shape."""
    exact: dict[str, Callable[[str, str], object]] = {
        keys.NODE_NVIDIA_REGISTER: lambda k, v: codecs.decode_node_devices(v, key=k),
        keys.NODE_NVIDIA_SCORE: lambda k, v: codecs.decode_node_scores(v, key=k),
        keys.NODE_LOCK: lambda k, v: codecs.decode_node_lock(v, key=k),
        keys.BIND_PHASE: lambda k, v: codecs.decode_bind_phase(v, key=k),
        keys.BIND_TIME: lambda k, v: codecs.decode_unix_time(v, key=k),
        keys.VGPU_TIME: lambda k, v: codecs.decode_unix_time(v, key=k),
    }
    if key in exact:
        return exact[key]
    if key.endswith(("-devices-to-allocate", "-devices-allocated")) or key == "hami.io/kunlun-allocated":
        return _pod_devices(v28)
    if key.startswith("hami.io/node-handshake"):
        return lambda k, v: codecs.decode_handshake(v, key=k)
    if key.startswith("hami.io/node-") and "register" in key:
        return lambda k, v: codecs.decode_node_devices(v, key=k)
    if key == "mig-uuid":
        return lambda k, v: codecs.decode_mig_uuid(v, key=k)
    return None


SUPPORTED_KEYS: Final = (
    keys.NODE_NVIDIA_REGISTER,
    keys.NODE_NVIDIA_SCORE,
    keys.NODE_HANDSHAKE,
    keys.NODE_LOCK,
    keys.VGPU_DEVICES_TO_ALLOCATE,
    keys.VGPU_DEVICES_ALLOCATED,
    keys.BIND_PHASE,
    keys.BIND_TIME,
    keys.VGPU_TIME,
    "hami.io/<vendor>-devices-allocated",
    "hami.io/node-<vendor>-register",
    "mig-uuid",
)


def run_decode(args: argparse.Namespace) -> int:
    decoder = _decoder_for(args.key, v28=args.v28)
    if decoder is None:
        print(
            f"hami codec: unsupported key {args.key!r}; supported: {', '.join(SUPPORTED_KEYS)}",
            file=sys.stderr,
        )
        return EXIT_DECODE_ERROR
    try:
        decoded = decoder(args.key, args.value)
    except DecodeError as e:
        print(f"hami codec: {e}", file=sys.stderr)
        return EXIT_DECODE_ERROR
    print(json.dumps(_jsonable(decoded), indent=None if args.compact else 2, ensure_ascii=False))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "codec",
        help="decode HAMi annotation values",
        description="Decode a HAMi 2.8 annotation value and print it as JSON.",
    )
    actions = parser.add_subparsers(dest="codec_action", metavar="ACTION", required=True)
    decode = actions.add_parser("decode", help="decode one annotation value")
    decode.add_argument("--key", required=True, help=f"annotation key, e.g. {keys.VGPU_DEVICES_ALLOCATED}")
    decode.add_argument("--value", required=True, help="annotation value")
    decode.add_argument(
        "--v28",
        action="store_true",
        help="pod device keys: decode as HAMi 2.8 does (empty containers dropped, lenient numbers)",
    )
    decode.add_argument("--compact", action="store_true", help="print JSON on one line")
    decode.set_defaults(func=run_decode)
