"""``socket`` for the virtual board: the school LAN of ``/lib/vboard.json`` (MicroPython code).

``lan`` maps ``"host:port"`` to the MQTT broker there, ``[username, password]`` of the one reader
account it accepts: a TCP connection to any other address is refused, and the broker answers an
MQTT CONNECT with CONNACK 0 (accepted) or 5 (not authorised), as Mosquitto does. UDP (SNTP) has
no route.
"""

import json

from firmware import mqtt_packets

with open("/lib/vboard.json") as _f:
    _LAN = json.load(_f).get("lan") or {}

AF_INET = 2
SOCK_STREAM = 1
SOCK_DGRAM = 2


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    return [(AF_INET, type or SOCK_STREAM, 0, "", (host, port))]


class socket:
    def __init__(self, family=AF_INET, type=SOCK_STREAM, proto=0):
        self._account = None
        self._reply = b""

    def settimeout(self, t):
        return None

    def setblocking(self, flag):
        return None

    def connect(self, address):
        account = _LAN.get(address[0] + ":" + str(address[1]))
        if account is None:
            raise OSError(113)  # EHOSTUNREACH
        self._account = account

    def sendto(self, data, address):
        raise OSError(113)

    def send(self, data):
        if self._account is None:
            raise OSError(128)  # ENOTCONN
        ptype, _flags, body = mqtt_packets.decode(data)
        if ptype == 1:
            fields = mqtt_packets.parse_connect(body)
            ok = [fields["username"], bytes(fields["password"] or b"").decode()] == self._account
            self._reply = mqtt_packets.connack(False, 0 if ok else 5)
        return len(data)

    write = send

    def recv(self, n):
        data, self._reply = self._reply[:n], self._reply[n:]
        return data

    def close(self):
        self._account = None
