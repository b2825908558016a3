"""A minimal telnet client for aiomonitor's UI: answers NAWS/TTYPE negotiation, strips ANSI."""

from __future__ import annotations

import asyncio
import re
import socket

IAC, SB, SE, WILL = 255, 250, 240, 251
NAWS, TTYPE = 31, 24
ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\x1b[=>]|\r")
PROMPT = b"monitor >>>"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def strip(data: bytes) -> str:
    # Drop telnet negotiation, then ANSI escapes.
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == IAC and i + 1 < len(data):
            cmd = data[i + 1]
            if cmd == SB:
                end = data.find(bytes([IAC, SE]), i)
                i = len(data) if end < 0 else end + 2
                continue
            i += 3 if cmd in (251, 252, 253, 254) else 2
            continue
        out.append(b)
        i += 1
    return ANSI.sub(b"", bytes(out)).decode(errors="replace")


class TelnetClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> TelnetClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 200, 0, 50, IAC, SE]))
        writer.write(bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE]))
        await writer.drain()
        return cls(reader, writer)

    async def until_prompt(self, wait_s: float = 10.0) -> str:
        async def read() -> str:
            while True:
                text = strip(self.buffer)
                if text.count(PROMPT.decode()) >= 1 and text.rstrip().endswith(PROMPT.decode().strip()):
                    self.buffer = b""
                    return text
                chunk = await self.reader.read(4096)
                if not chunk:
                    raise ConnectionError(f"closed; got {text!r}")
                if b"\x1b[6n" in chunk:  # cursor position request
                    self.writer.write(b"\x1b[1;1R")
                self.buffer += chunk

        return await asyncio.wait_for(read(), wait_s)

    async def run(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r")
        await self.writer.drain()
        return await self.until_prompt()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
