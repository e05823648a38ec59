"""The MicroPython VM harness itself: real MicroPython, output, errors, files, asyncio, timeouts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.mpvm import MPVM, MicroPythonError, MPVMTimeout
from tests.project_files import REPO_ROOT


def test_it_is_micropython_1_29(mpvm: MPVM) -> None:
    out = mpvm.run(
        """
        import sys
        print(sys.implementation.name)
        print(".".join(str(n) for n in sys.implementation.version[:2]))
        """
    )
    assert out.splitlines() == ["micropython", "1.29"]
    assert mpvm.info["version"] == "1.29.0-6"


def test_stdout_is_captured_in_order(mpvm: MPVM) -> None:
    out = mpvm.run("for i in range(3):\n    print('line', i)\nprint('é✓', end='')")
    assert out == "line 0\nline 1\nline 2\né✓"


def test_exception_carries_micropython_traceback(mpvm: MPVM) -> None:
    code = """
    def inner():
        raise ValueError("bad frame")

    print("before")
    inner()
    """
    with pytest.raises(MicroPythonError) as info:
        mpvm.run(code)
    err = info.value
    assert err.exc_type == "ValueError"
    assert "Traceback (most recent call last):" in err.traceback
    assert "in inner" in err.traceback
    assert "ValueError: bad frame" in err.traceback
    assert err.stdout == "before\n"
    assert "ValueError: bad frame" in str(err)


def test_runs_are_isolated(mpvm: MPVM) -> None:
    mpvm.run(
        "import sys\nsys.path.append('/leak')\nopen('/tmp/leak.txt', 'w').write('x')\nLEAK = 2"
    )
    out = mpvm.run(
        "import os, sys\n"
        "print('/leak' in sys.path, 'LEAK' in globals(), 'leak.txt' in os.listdir('/tmp'))"
    )
    assert out == "False False False\n"


def test_extra_files_are_readable(mpvm: MPVM, tmp_path: Path) -> None:
    host = tmp_path / "vectors.json"
    host.write_text(json.dumps({"cases": [1, 2, 3]}))
    out = mpvm.run(
        """
        import json
        with open("data/vectors.json") as f:
            print(sum(json.load(f)["cases"]))
        with open("/data/blob.bin", "rb") as f:
            print(f.read() == bytes(range(256)))
        with open("/helper.py") as f:
            pass
        import helper
        print(helper.X)
        """,
        files={
            "data/vectors.json": host,
            "/data/blob.bin": bytes(range(256)),
            "helper.py": "X = 42\n",
        },
    )
    assert out.splitlines() == ["6", "True", "42"]


def test_top_level_await_runs_asyncio(mpvm: MPVM) -> None:
    out = mpvm.run(
        """
        import asyncio

        async def tick(name, n):
            for i in range(n):
                await asyncio.sleep_ms(1)
                print(name, i)

        await asyncio.gather(tick("a", 2), tick("b", 2))
        print("done")
        """
    )
    assert sorted(out.splitlines()[:4]) == ["a 0", "a 1", "b 0", "b 1"]
    assert out.splitlines()[-1] == "done"


def test_asyncio_run_shim(mpvm: MPVM) -> None:
    out = mpvm.run(
        """
        import asyncio

        async def main():
            await asyncio.sleep_ms(2)
            print("main ran")

        asyncio.run(main())
        """
    )
    assert out == "main ran\n"


def test_asyncio_exception_propagates(mpvm: MPVM) -> None:
    with pytest.raises(MicroPythonError) as info:
        mpvm.run(
            """
            import asyncio

            async def fail():
                await asyncio.sleep_ms(1)
                raise OSError(5)

            await fail()
            """
        )
    assert info.value.exc_type == "OSError"
    assert "in fail" in info.value.traceback


def test_timeout_kills_and_next_run_works(mpvm: MPVM) -> None:
    started = time.monotonic()
    with pytest.raises(MPVMTimeout, match=r"did not finish within 1 s"):
        mpvm.run("while True:\n    pass", timeout=1)
    assert time.monotonic() - started < 10
    assert mpvm.run("print(6 * 7)") == "42\n"


def test_async_hang_times_out(mpvm: MPVM) -> None:
    with pytest.raises(MPVMTimeout):
        mpvm.run("import asyncio\nawait asyncio.Event().wait()", timeout=1)
    assert mpvm.run("print('alive')") == "alive\n"


def test_leftover_tasks_do_not_run_into_the_next_run(mpvm: MPVM) -> None:
    mpvm.run(
        """
        import asyncio

        async def forever():
            while True:
                await asyncio.sleep_ms(1)
                print("ghost")

        asyncio.create_task(forever())
        """,
        asyncio_run_shim=False,
    )
    result = mpvm.execute("import time\ntime.sleep_ms(20)\nprint('clean')")
    assert result.stdout == "clean\n"


def test_heapsize_sets_the_initial_heap(mpvm: MPVM) -> None:
    # The port grows its heap on demand (split heap), so heapsize is the starting size, not a cap:
    # memory budgets are asserted on gc.mem_alloc() figures, not on MemoryError.
    code = """
    import gc, micropython
    micropython.mem_info()
    gc.collect()
    before = gc.mem_alloc()
    buf = bytearray(4096)
    print("delta", gc.mem_alloc() - before)
    """

    def total(out: str) -> int:
        line = next(ln for ln in out.splitlines() if ln.startswith("GC: total:"))
        return int(line.split(",")[0].split(":")[-1])

    small = mpvm.run(code, heapsize=64 * 1024)
    assert 48 * 1024 < total(small) <= 64 * 1024
    assert total(mpvm.run(code)) > 512 * 1024  # default: 1 MiB
    delta = int(small.split("delta")[1])
    assert 4096 <= delta <= 4096 + 64


def test_has_the_modules_the_firmware_relies_on(mpvm: MPVM) -> None:
    out = mpvm.run(
        """
        import asyncio, binascii, gc, hashlib, json, os, struct
        from micropython import const
        X = const(3)
        print(X, binascii.hexlify(hashlib.sha256(b"abc").digest()[:4]))
        """
    )
    assert out == "3 b'ba7816bf'\n"


@pytest.mark.skipif(
    not (REPO_ROOT / "protocol" / "__init__.py").is_file(), reason="protocol/ not written yet"
)
def test_protocol_package_is_importable(mpvm: MPVM) -> None:
    out = mpvm.run(
        """
        import os
        import protocol
        print(sorted(n for n in os.listdir("/protocol") if n.endswith(".py")))
        print("construct_codec.py" in os.listdir("/protocol"), "vectors" in os.listdir("/protocol"))
        """
    )
    listed, excluded = out.splitlines()
    assert "'__init__.py'" in listed
    assert excluded == "False False"
