#!/usr/bin/python3
"""Hostile NBD clients on raw sockets. After every case the server must still serve a
well-behaved client (handshake, read, pattern check) and its process must be alive.

  hostile.py RW_SOCKET RO_SOCKET EXPORT PID_RW PID_RO
RW_SOCKET: a writable export EXPORT served with -e 2 (the connection-limit case holds two).
RO_SOCKET: the same image served read-only (-r). The first 64 KiB of the disk hold 0x11.
Exits 1 when a case fails; prints what each server did.
"""
import os
import socket
import struct
import sys
import time

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO, OPT_STRUCTURED = 1, 2, 3, 5, 6, 7, 8
REP_ACK, REP_INFO = 1, 3
REP_ERR = 0x80000000
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EPERM, EINVAL = 1, 22
TIMEOUT = 5.0

RW, RO, EXPORT = sys.argv[1], sys.argv[2], sys.argv[3].encode()
PIDS = [int(sys.argv[4]), int(sys.argv[5])]
failures = 0


class Closed(Exception):
    pass


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except (ConnectionResetError, BrokenPipeError):
            raise Closed()
        if not chunk:
            raise Closed()
        buf += chunk
    return buf


def send(s, data):
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        raise Closed()


def greeting(s):
    g = recv_exact(s, 18)
    assert g[:8] == NBDMAGIC, g
    magic, flags = struct.unpack(">QH", g[8:])
    assert magic == IHAVEOPT, hex(magic)
    return flags


def option(s, opt, data=b""):
    send(s, struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def option_reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REPLY_MAGIC, hex(magic)
    return opt, rtype, recv_exact(s, length)


def go(s, name=EXPORT):
    """OPT_GO; returns (size, transmission flags). Raises on refusal."""
    option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    size = tflags = None
    while True:
        _, rtype, data = option_reply(s)
        if rtype == REP_ACK:
            return size, tflags
        if rtype & REP_ERR:
            raise RuntimeError(f"OPT_GO refused: reply type {rtype:#x} {data!r}")
        if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size, tflags = struct.unpack(">QH", data[2:12])


def open_export(path, name=EXPORT):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    size, tflags = go(s, name)
    return s, size, tflags


def request(s, cmd, offset, length, handle=1, flags=0, payload=b""):
    send(s, struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload)


def simple_reply(s, read_len=0):
    magic, err, handle = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
    data = recv_exact(s, read_len) if err == 0 and read_len else b""
    return err, handle, data


def well_behaved(path):
    s, size, _ = open_export(path)
    request(s, CMD_READ, 0, 65536, handle=7)
    err, handle, data = simple_reply(s, 65536)
    assert err == 0 and handle == 7 and data == b"\x11" * 65536, (err, handle, data[:8])
    request(s, CMD_DISC, 0, 0)
    s.close()
    return size


def alive():
    for pid in PIDS:
        os.kill(pid, 0)


def case(name, fn, path=RW):
    """Runs a hostile case; the outcome string it returns is printed. Then the server must
    still serve a well-behaved client."""
    global failures
    try:
        outcome = fn(path)
        print(f"ok: {name}: {outcome}")
    except Exception as e:  # noqa: BLE001 -- any surprise is a failed case
        failures += 1
        print(f"FAIL: {name}: {type(e).__name__}: {e}")
    try:
        alive()
        well_behaved(RW)
        well_behaved(RO)
    except Exception as e:  # noqa: BLE001
        failures += 1
        print(f"FAIL: after {name}, the server no longer serves a good client: {type(e).__name__}: {e}")


def expect_closed_or(s, what):
    """The server must close the connection (EOF or reset) within the timeout."""
    try:
        data = s.recv(65536)
        while data:
            data = s.recv(65536)
        return f"{what}: disconnected"
    except (ConnectionResetError, BrokenPipeError):
        return f"{what}: connection reset"
    except socket.timeout:
        raise AssertionError(f"{what}: server neither answered nor disconnected in {TIMEOUT} s")


# --- handshake phase -----------------------------------------------------------------------

def bad_client_flags(path):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 0xFFFFFFFF))
    # Unknown client flags: the server must close (spec: MUST NOT continue).
    try:
        option(s, OPT_GO, struct.pack(">I", len(EXPORT)) + EXPORT + b"\0\0")
        _, rtype, _ = option_reply(s)
        raise AssertionError(f"server went on after unknown client flags (reply {rtype:#x})")
    except Closed:
        return "disconnected"


def bad_option_magic(path):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    send(s, b"BADMAGIC" + struct.pack(">II", OPT_GO, 0))
    try:
        _, rtype, _ = option_reply(s)
        if rtype & REP_ERR:
            return f"error reply {rtype:#x}, " + expect_closed_or(s, "then")
        raise AssertionError(f"bad option magic accepted (reply {rtype:#x})")
    except Closed:
        return "disconnected"


def truncated_greeting(path):
    s = connect(path)
    greeting(s)
    send(s, b"\0\0")  # half the client flags
    s.close()
    return "client vanished mid-handshake"


def truncated_option(path):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    send(s, struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0\0\x08hos")
    s.close()
    return "client vanished inside an option"


def no_greeting_reply(path):
    s = connect(path)
    s.close()
    return "client closed before reading the greeting"


def oversized_option(path):
    # A 4 GiB option: the server must refuse it (error reply, disconnect) or skip its payload,
    # never try to buffer it. We send 1 MiB of it and expect an error or a disconnect.
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    try:
        send(s, struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFF0))
        send(s, b"\xAB" * (1 << 20))
    except Closed:
        return "disconnected"
    try:
        _, rtype, data = option_reply(s)
        if rtype & REP_ERR:
            return f"error reply {rtype:#x}"
        raise AssertionError(f"oversized option accepted (reply {rtype:#x})")
    except Closed:
        return "disconnected"
    except socket.timeout:
        # Still reading the announced payload: acceptable if memory stays bounded; give up.
        return "server kept draining the payload (no reply within the timeout)"


def oversized_name(path):
    # A valid-length option whose export name is 64 KiB: error reply or disconnect.
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    name = b"x" * 65536
    try:
        option(s, OPT_GO, struct.pack(">I", len(name)) + name + b"\0\0")
        _, rtype, _ = option_reply(s)
    except Closed:
        return "disconnected"
    if not rtype & REP_ERR:
        raise AssertionError(f"64 KiB export name accepted (reply {rtype:#x})")
    return f"error reply {rtype:#x}"


def bad_length_structured(path):
    # NBD_OPT_STRUCTURED_REPLY carries no data: a length must get NBD_REP_ERR_INVALID.
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    try:
        option(s, OPT_STRUCTURED, b"\0" * 1000)
        _, rtype, _ = option_reply(s)
    except Closed:
        return "disconnected"
    if rtype != REP_ERR | 3:
        raise AssertionError(f"expected NBD_REP_ERR_INVALID, got {rtype:#x}")
    # and the handshake goes on
    go(s)
    request(s, CMD_READ, 0, 512)
    err, _, data = simple_reply(s, 512)
    assert err == 0 and data == b"\x11" * 512
    return "NBD_REP_ERR_INVALID, then the handshake went on"


def unknown_export(path):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    try:
        go(s, b"no-such-export")
    except RuntimeError as e:
        return str(e)
    except Closed:
        return "disconnected"
    raise AssertionError("unknown export accepted")


def unknown_option(path):
    s = connect(path)
    greeting(s)
    send(s, struct.pack(">I", 3))
    option(s, 0x7777, b"junk")
    _, rtype, _ = option_reply(s)
    if rtype != REP_ERR | 1:
        raise AssertionError(f"expected NBD_REP_ERR_UNSUP, got {rtype:#x}")
    go(s)
    return "NBD_REP_ERR_UNSUP, then the handshake went on"


# --- transmission phase --------------------------------------------------------------------

def transmission(path, send_request, what):
    s, size, _ = open_export(path)
    try:
        send_request(s, size)
        err, handle, _ = simple_reply(s)
    except Closed:
        return f"{what}: disconnected"
    if err == 0:
        raise AssertionError(f"{what}: server answered success")
    # The connection must remain usable after an error reply.
    try:
        request(s, CMD_READ, 0, 4096, handle=99)
        err2, h2, data = simple_reply(s, 4096)
    except Closed:
        return f"{what}: error {err}, then disconnected"
    assert err2 == 0 and h2 == 99 and data == b"\x11" * 4096, (err2, h2)
    return f"{what}: error {err}, connection still usable"


def read_past_end(path):
    return transmission(path, lambda s, size: request(s, CMD_READ, size, 4096), "read at the end")


def read_across_end(path):
    return transmission(path, lambda s, size: request(s, CMD_READ, size - 512, 4096), "read across the end")


def read_offset_overflow(path):
    return transmission(path, lambda s, size: request(s, CMD_READ, 2**64 - 512, 4096), "offset+length wraps")


def read_too_big(path):
    return transmission(path, lambda s, size: request(s, CMD_READ, 0, 33 << 20), "33 MiB read")


def write_too_big(path):
    def send_it(s, size):
        request(s, CMD_WRITE, 0, 33 << 20, payload=b"\x11" * (33 << 20))
    return transmission(path, send_it, "33 MiB write")


def write_past_end(path):
    def send_it(s, size):
        request(s, CMD_WRITE, size, 4096, payload=b"\x11" * 4096)
    return transmission(path, send_it, "write at the end")


def unknown_command(path):
    return transmission(path, lambda s, size: request(s, 99, 0, 4096), "command 99")


def unknown_flags(path):
    return transmission(path, lambda s, size: request(s, CMD_READ, 0, 4096, flags=0x8000), "unknown request flag")


def write_read_only(path):
    s, size, tflags = open_export(path)
    assert tflags & 2, "read-only export without NBD_FLAG_READ_ONLY"
    try:
        request(s, CMD_WRITE, 0, 4096, payload=b"\x99" * 4096)
        err, _, _ = simple_reply(s)
    except Closed:
        return "disconnected"
    if err == 0:
        raise AssertionError("write on a read-only export succeeded")
    request(s, CMD_READ, 0, 4096, handle=5)
    err2, _, data = simple_reply(s, 4096)
    assert err2 == 0 and data == b"\x11" * 4096, "data changed or connection broken"
    return f"error {err} ({'EPERM' if err == EPERM else 'not EPERM'}), data unchanged"


def bad_request_magic(path):
    s, size, _ = open_export(path)
    send(s, struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 4096))
    return expect_closed_or(s, "bad request magic")


def truncated_request(path):
    s, size, _ = open_export(path)
    send(s, struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 65536) + b"\0" * 100)
    s.close()
    return "client vanished inside a write payload"


def many_connections(path):
    # Served with -e 2: while two clients hold the export, a third must not get it (no
    # greeting, a refusal, or a disconnect); once they leave, a new client is served.
    held = [open_export(path)[0] for _ in range(2)]
    third = connect(path)
    third.settimeout(1.5)
    outcome = None
    try:
        greeting(third)
        send(third, struct.pack(">I", 3))
        go(third)
        outcome = "served"
    except socket.timeout:
        outcome = "kept waiting (not accepted)"
    except Closed:
        outcome = "disconnected"
    except RuntimeError as e:
        outcome = f"refused: {e}"
    third.close()
    for s in held:
        request(s, CMD_DISC, 0, 0)
        s.close()
    if outcome == "served":
        raise AssertionError("a third client was served with -e 2")
    # The limit frees up: a new client is served within a few seconds.
    deadline = time.time() + 10
    while True:
        try:
            well_behaved(path)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    return f"third client {outcome}; served again once the two left"


def block_status_without_context(path):
    # BLOCK_STATUS (7) without a negotiated meta context: EINVAL (spec) or a disconnect.
    return transmission(path, lambda s, size: request(s, 7, 0, 4096), "BLOCK_STATUS without a context")


def trim_past_end(path):
    return transmission(path, lambda s, size: request(s, 4, size - 4096, 8192), "TRIM across the end")


def zeroes_past_end(path):
    return transmission(path, lambda s, size: request(s, 6, size, 4096), "WRITE_ZEROES at the end")


def pipelined_flood(path):
    # 512 reads of 1 MiB sent back to back while the replies are read: the server may hold
    # back (bounded in-flight requests) but must answer every one, in any order.
    import threading
    s, size, _ = open_export(path)
    count = 512

    def sender():
        for i in range(count):
            request(s, CMD_READ, (i * (1 << 20)) % size, 1 << 20, handle=1000 + i)
    t = threading.Thread(target=sender)
    t.start()
    seen = set()
    s.settimeout(30)
    for _ in range(count):
        err, handle, data = simple_reply(s, 1 << 20)
        assert err == 0 and data == b"\x11" * (1 << 20), (err, handle)
        seen.add(handle)
    t.join()
    assert seen == set(range(1000, 1000 + count)), "missing or repeated handles"
    request(s, CMD_DISC, 0, 0)
    return f"{count} pipelined 1 MiB reads all answered"


def never_reads(path):
    # A client that sends 256 reads of 1 MiB and never reads a reply, then vanishes: the
    # server must stop at its socket buffer (backpressure), not buffer 256 MiB, and carry on.
    s, size, _ = open_export(path)
    s.settimeout(2)
    sent = 0
    try:
        for i in range(256):
            request(s, CMD_READ, 0, 1 << 20, handle=i)
            sent += 1
    except (Closed, socket.timeout):
        pass
    s.close()
    return f"sent {sent} reads without reading a reply, then closed"


def many_hostile_in_a_row(path):
    for _ in range(50):
        s = connect(path)
        s.close()
    for _ in range(20):
        s = connect(path)
        greeting(s)
        send(s, os.urandom(64))
        s.close()
    return "70 connections dropped or fed random bytes"


for name, fn, path in [
    ("unknown client flags", bad_client_flags, RW),
    ("bad option magic", bad_option_magic, RW),
    ("truncated greeting reply", truncated_greeting, RW),
    ("truncated option", truncated_option, RW),
    ("close before greeting", no_greeting_reply, RW),
    ("oversized option length", oversized_option, RW),
    ("64 KiB export name", oversized_name, RW),
    ("STRUCTURED_REPLY with data", bad_length_structured, RW),
    ("unknown export", unknown_export, RW),
    ("unknown option", unknown_option, RW),
    ("read past the end", read_past_end, RW),
    ("read across the end", read_across_end, RW),
    ("offset overflow", read_offset_overflow, RW),
    ("read over 32 MiB", read_too_big, RW),
    ("write over 32 MiB", write_too_big, RW),
    ("write past the end", write_past_end, RW),
    ("unknown command", unknown_command, RW),
    ("unknown request flags", unknown_flags, RW),
    ("write on a read-only export", write_read_only, RO),
    ("bad request magic", bad_request_magic, RW),
    ("truncated request", truncated_request, RW),
    ("BLOCK_STATUS without a meta context", block_status_without_context, RW),
    ("TRIM across the end", trim_past_end, RW),
    ("WRITE_ZEROES at the end", zeroes_past_end, RW),
    ("512 pipelined 1 MiB reads", pipelined_flood, RW),
    ("a client that never reads its replies", never_reads, RW),
    ("connections beyond -e", many_connections, RW),
    ("garbage storm", many_hostile_in_a_row, RW),
]:
    case(name, fn, path)

sys.exit(1 if failures else 0)
