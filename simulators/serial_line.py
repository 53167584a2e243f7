"""A virtual RS-485 line between two serial ports, in pure Python: two pseudo-terminal pairs
whose master ends this module bridges, pacing the bytes at the line's baud rate.

A pty alone ignores the baud rate (STACK.md: a 40-register read took 0.3 ms at "19,200 baud",
whose wire time is ~51 ms), so timing figures and timeouts over it would mean nothing. Here a
chunk of bytes reaches the other end only when its last character would have: one character is
start + data + parity + stop bits at the configured rate, plus the 3.5 characters of silence
by which an RTU receiver knows a frame has ended (1.75 ms above 19,200 baud, as the standard
fixes it); and the line is half-duplex (one direction at a time, as RS-485 is), so a reply waits
for the request to be off the wire.

The two ends are ordinary tty paths (`device_path` for the simulated devices, `client_path` for
coolctl), opened with pyserial like a USB RS-485 adapter would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
from typing import Final

_READ_SIZE: Final = 4096


class VirtualSerialLine:
    """Two tty paths joined by a paced, half-duplex line. `start()` inside an event loop."""

    def __init__(self, *, baudrate: int = 19200, bits_per_character: int = 11) -> None:
        if baudrate <= 0 or bits_per_character <= 0:
            raise ValueError("baud rate and bits per character must be positive")
        self.baudrate = baudrate
        self.bits_per_character = bits_per_character
        self.bytes_carried = 0
        self._fds: list[int] = []
        self._masters: tuple[int, int] | None = None
        self.device_path = ""
        self.client_path = ""
        self._line_free_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.TimerHandle] = set()

    @property
    def character_s(self) -> float:
        return self.bits_per_character / self.baudrate

    @property
    def frame_gap_s(self) -> float:
        """The silence that ends an RTU frame."""
        return 3.5 * self.character_s if self.baudrate <= 19200 else 0.00175

    def start(self) -> None:
        """Open both pty pairs and start carrying bytes."""
        if self._masters is not None:
            raise RuntimeError("the serial line is already running")
        self._loop = asyncio.get_running_loop()
        device_master, device_slave = os.openpty()
        client_master, client_slave = os.openpty()
        self._fds = [device_master, device_slave, client_master, client_slave]
        for fd in self._fds:
            tty.setraw(fd, termios.TCSANOW)
            os.set_blocking(fd, False)
        self.device_path = os.ttyname(device_slave)
        self.client_path = os.ttyname(client_slave)
        self._masters = (device_master, client_master)
        self._loop.add_reader(device_master, self._carry, device_master, client_master)
        self._loop.add_reader(client_master, self._carry, client_master, device_master)

    def stop(self) -> None:
        """Close the line; bytes still on the wire are lost, as on a cut cable."""
        if self._loop is not None and self._masters is not None:
            for master in self._masters:
                self._loop.remove_reader(master)
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._masters = None

    def _carry(self, source: int, target: int) -> None:
        try:
            data = os.read(source, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the other end closed its tty: nothing to carry
            return
        if not data or self._loop is None:
            return
        now = time.monotonic()
        start = max(now, self._line_free_at)
        self._line_free_at = start + len(data) * self.character_s + self.frame_gap_s
        handle = self._loop.call_later(self._line_free_at - now, self._deliver, target, data)
        self._pending.add(handle)

    def _deliver(self, target: int, data: bytes) -> None:
        if self._loop is not None:
            now = self._loop.time()
            self._pending = {h for h in self._pending if h.when() > now}
        with contextlib.suppress(OSError):  # an end that is closed drops the bytes
            os.write(target, data)
            self.bytes_carried += len(data)
