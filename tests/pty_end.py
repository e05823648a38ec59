"""One end of a pseudo-terminal pair, as the tests' simulated serial buses use it.

The other end (``port``, e.g. ``/dev/pts/7``) is opened by pyserial exactly like a USB RS-485
adapter; this end writes without ever blocking the event loop: what the pty does not take at
once is buffered and written when it becomes writable.
"""

from __future__ import annotations

import asyncio
import os
import tty


class PtyEnd:
    def __init__(self) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.port = os.ttyname(self.slave_fd)
        self._out = bytearray()
        self._writing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, data: bytes) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self.master_fd, self._out)
            except BlockingIOError:
                break
            except OSError:  # the other end went away: nothing to deliver to
                self._out.clear()
                break
            del self._out[:n]
        assert self._loop is not None
        if self._out and not self._writing:
            self._loop.add_writer(self.master_fd, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self.master_fd)
            self._writing = False

    def close(self) -> None:
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self.master_fd)
            self._writing = False
        os.close(self.master_fd)
        os.close(self.slave_fd)
