# Runs on the MicroPython VM: every golden vector through protocol.codec, then every single-byte
# flip of every valid record. Prints one JSON object per line: {"name", "ok", "detail"}.
import json
from binascii import hexlify, unhexlify

from protocol import peer
from protocol.errors import ProtocolError

BYTES_FIELDS = ("uid", "mac", "payload")


def hexed(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hexlify(bytes(value)).decode()
    if isinstance(value, dict):
        return {k: hexed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hexed(v) for v in value]
    return value


def unhexed(fields):
    out = dict(fields)
    for name in BYTES_FIELDS:
        if name in out:
            out[name] = unhexlify(out[name])
    if "records" in out:
        out["records"] = [unhexed(r) for r in out["records"]]
    return out


def report(name, ok, detail=""):
    print(json.dumps({"name": name, "ok": ok, "detail": detail}))


with open("vectors.json") as f:
    vectors = json.load(f)
keys = {name: unhexlify(value) for name, value in vectors["keys"].items()}

for case in vectors["valid"]:
    key = keys[case["key"]] if case["key"] else None
    data = unhexlify(case["hex"])
    try:
        fields = hexed(peer.decode(case["kind"], data, key))
        if fields != case["fields"]:
            report(case["name"], False, "fields " + json.dumps(fields))
            continue
        again = peer.encode(case["kind"], unhexed(case["fields"]), key)
        if again != data:
            report(case["name"], False, "re-encoded " + hexlify(again).decode())
            continue
        report(case["name"], True)
    except Exception as exc:
        report(case["name"], False, "raised " + repr(exc))

for case in vectors["invalid"]:
    key = keys[case["key"]] if case["key"] else None
    try:
        peer.decode(case["kind"], unhexlify(case["hex"]), key)
        report(case["name"], False, "accepted")
    except ProtocolError as exc:
        report(case["name"], exc.code == case["error"], "code " + exc.code)
    except Exception as exc:
        report(case["name"], False, "raised " + repr(exc))

for case in vectors["valid"]:
    if case["kind"] != "record":
        continue
    data = bytearray(unhexlify(case["hex"]))
    accepted = []
    for i in range(len(data)):
        data[i] ^= 0xFF
        try:
            peer.decode("record", data, keys[case["key"]])
            accepted.append(i)
        except ProtocolError:
            pass
        data[i] ^= 0xFF
    report("flip:" + case["name"], not accepted, "accepted flips at " + repr(accepted))
