#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target into Fuzz/Corpus/<target>/ (committed; rerun to regenerate)."""
import json
import zlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
EVENTS = ["chat:send", "chat:join", "chat:leave", "chat:delivered", "chat:mark-read", "chat:typing:start",
          "chat:typing:stop", "chat:edit", "chat:delete", "chat:history", "chat:sync", "chat:unknown"]


def put(target, name, data):
    d = os.path.join(HERE, "Corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


socket_packets = [
    '0', '0/chat,{"token":"abc.def.ghi"}', '40/chat,{"token":"x"}', '41/chat,', '44/chat,{"message":"invalid token"}',
    '42/chat,["chat:send",{"threadId":"t1","content":"hello","tempId":"tmp-1"}]',
    '42/chat,17["chat:history",{"threadId":"t1","beforeSeq":10,"limit":20}]',
    '43/chat,5[{"success":true}]', '451-/chat,["chat:send",{"_placeholder":true,"num":0}]',
    '461-/chat,3[{"_placeholder":true,"num":0}]', '42["hello",1,2.5e3,null,true,"\\u00e9\\ud83d\\ude00"]',
    '2/chat,', '42/chat,999999999999999["x"]',
]
for i, p in enumerate(socket_packets):
    put("FuzzSocketCodec", f"seed-{i:02d}", p)

engine = ['0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}',
          "2", "3", "2probe", "5", "6", "1", "b" + "AAEC", ""] + ["4" + p for p in socket_packets[:6]]
for i, p in enumerate(engine):
    put("FuzzEngineCodec", f"seed-{i:02d}", p)
put("FuzzEngineCodec", "seed-payload", "\x1e".join(["4" + p for p in socket_packets[:5]] + ["2", "6"]))

docs = ['{}', '[]', '{"a":[1,2,{"b":null}],"c":"\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"}', '-0.0e+10', '1e309',
        '123456789012345678901234567890', '"\\uD800\\uDC00"', '[[[[[[[[[[[[]]]]]]]]]]]]', ' true ', 'null',
        '{"threadId":"t","content":"' + "x" * 200 + '"}', '{"a":1,"a":2}', '[1.5,-2,3e-7,0]']
for i, d in enumerate(docs):
    put("FuzzJSONParser", f"seed-{i:02d}", d)

payloads = {
    "chat:send": {"threadId": "t1", "content": "hi", "type": "Image", "attachmentUrl": "http://x/y.png",
                  "attachmentType": "image/png", "tempId": "tmp"},
    "chat:join": {"threadId": "t1"}, "chat:leave": {"threadId": "t1"},
    "chat:delivered": {"threadId": "t1", "messageIds": ["m1", "m2"]},
    "chat:mark-read": {"threadId": "t1", "upToSeq": 5}, "chat:typing:start": {"threadId": "t1"},
    "chat:typing:stop": {"threadId": "t1"}, "chat:edit": {"threadId": "t1", "messageId": "m1", "content": "e"},
    "chat:delete": {"threadId": "t1", "messageId": "m1"},
    "chat:history": {"threadId": "t1", "beforeSeq": 3, "limit": 500},
    "chat:sync": {"threads": [{"threadId": "t1", "afterSeq": 0}, {"threadId": "t2"}]},
    "chat:unknown": {"x": 1},
}
for i, ev in enumerate(EVENTS):
    put("FuzzClientCommand", f"seed-{ev.replace(':', '-')}", bytes([i]) + json.dumps(payloads[ev]).encode())


def fnv1a(b):
    h = 0x811C9DC5
    for x in b:
        h = ((h ^ x) * 0x01000193) & 0xFFFFFFFF
    return h


def lz4_literals(raw):
    """One LZ4 block holding `raw` as literals only (a valid block: the last sequence has no match)."""
    n = len(raw)
    out = bytearray()
    if n < 15:
        out.append(n << 4)
    else:
        out.append(0xF0)
        rest = n - 15
        while rest >= 255:
            out.append(255)
            rest -= 255
        out.append(rest)
    return bytes(out) + raw


def chunk(first, events):
    raw = json.dumps(events, separators=(",", ":")).encode()
    last = first + len(events) - 1
    return b"CBH1" + struct.pack("<QQII", first, last, len(raw), fnv1a(raw)) + lz4_literals(raw)


def chunk_v2(first, events):
    """The second format: CRC-32 (zlib) of the compressed block instead of FNV-1a of the raw bytes."""
    raw = json.dumps(events, separators=(",", ":")).encode()
    last = first + len(events) - 1
    block = lz4_literals(raw)
    return b"CBH2" + struct.pack("<QQII", first, last, len(raw), zlib.crc32(block)) + block


def chunk_v3(first, events, split):
    """The current format: blocks, each after its raw and compressed lengths (u32 LE); CRC-32 of all of them. The raw
    JSON is cut into two blocks at `split`."""
    raw = json.dumps(events, separators=(",", ":")).encode()
    last = first + len(events) - 1
    body = b""
    for part in (raw[:split], raw[split:]):
        block = lz4_literals(part)
        body += struct.pack("<II", len(part), len(block)) + block
    return b"CBH3" + struct.pack("<QQII", first, last, len(raw), zlib.crc32(body)) + body


def msg(seq, **over):
    m = {"id": f"m{seq}", "threadId": "t1", "seq": seq, "senderId": "alice", "type": "Text", "content": f"hello {seq}",
         "attachmentUrl": None, "attachmentType": None, "createdAt": "2026-11-27T15:04:05.123Z", "editedAt": None,
         "deletedAt": None, "tempId": None}
    m.update(over)
    return m


# the first byte picks the harness mode: odd = a whole chunk, even = raw JSON wrapped in a valid chunk
raw3 = [{"k": "message", "s": 5, "m": msg(5)},
        {"k": "edited", "s": 6, "m": msg(5, content="e", editedAt="2026-11-27T15:04:06.000Z")},
        {"k": "deleted", "s": 7, "m": msg(5, content="", deletedAt="2026-11-27T15:04:07.000Z")}]
put("FuzzHistoryChunk", "seed-raw-one", b"\x00\x00\x00" + json.dumps([{"k": "message", "s": 1, "m": msg(1)}]).encode())
put("FuzzHistoryChunk", "seed-raw-three", b"\x00\x04\x02" + json.dumps(raw3).encode())
put("FuzzHistoryChunk", "seed-one", b"\x01" + chunk(1, [{"k": "message", "s": 1, "m": msg(1)}]))
put("FuzzHistoryChunk", "seed-three", b"\x01" + chunk(5, [{"k": "message", "s": 5, "m": msg(5)},
                                              {"k": "edited", "s": 6, "m": msg(5, content="e", editedAt="2026-11-27T15:04:06.000Z")},
                                              {"k": "deleted", "s": 7, "m": msg(5, content="", deletedAt="2026-11-27T15:04:07.000Z")}]))
put("FuzzHistoryChunk", "seed-bad-checksum", b"\x01" + chunk(1, [{"k": "message", "s": 1, "m": msg(1)}])[:24] + b"\0\0\0\0" +
    chunk(1, [{"k": "message", "s": 1, "m": msg(1)}])[28:])
put("FuzzHistoryChunk", "seed-v2-one", b"\x01" + chunk_v2(1, [{"k": "message", "s": 1, "m": msg(1)}]))
put("FuzzHistoryChunk", "seed-v3-three", b"\x01" + chunk_v3(5, raw3, 100))
v3 = chunk_v3(5, raw3, 100)
put("FuzzHistoryChunk", "seed-v3-body", b"\x02\x04\x02" + v3[20:24] + v3[28:])
put("FuzzHistoryChunk", "seed-header-only", b"\x01CBH1" + struct.pack("<QQII", 1, 1, 10, 0))
print("seeds written")
