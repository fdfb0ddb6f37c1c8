#!/usr/bin/env python3
"""ClickHouse HTTP interface in front of the real ClickHouse 26.9 engine (PyPI chdb-core, in-process).

Serves the part of ClickHouse's HTTP interface that HTTP clients such as the Rust `clickhouse`
crate use, over one file-backed engine, so data survives a restart on the same --data-dir:

  GET|HEAD /ping, GET / (no query)     -> "Ok.\\n"
  query in the `query` URL parameter, in the body, or both (URL part + "\\n" + body, so
  `?query=INSERT INTO t FORMAT RowBinary` + rows in the body works); multipart/form-data bodies
  (fields `query` and `param_*`); `param_NAME` -> query parameters `{NAME:Type}`; other URL
  parameters are settings (applied per request, like the real server).
  decompress=1: request body is ClickHouse native compressed blocks (LZ4/ZSTD/none, CityHash128
  checked); compress=1: response as such blocks (LZ4); Accept-Encoding lz4/zstd/gzip/deflate with
  enable_http_compression (default on in 26.9): Content-Encoding on the response; request
  Content-Encoding gzip/deflate/zstd/lz4 is decoded.
  INSERT ... FORMAT X with data: the data is streamed into the engine as it arrives (chunked or
  Content-Length bodies).
  Errors: HTTP 4xx/5xx, X-ClickHouse-Exception-Code, body "Code: N. DB::Exception: ... (NAME) (version V)".
  session_id: a per-session engine connection (SET/USE/temporary tables persist), session_timeout.

Every request gets its own engine connection (cheap: ~0.1 ms) on the one engine, so queries run in
parallel and /ping answers while a query runs; --max-queries bounds how many run at once (1 =
strictly serialised).

system.asynchronous_metrics does not exist in the embedded engine; this front creates it (a
Memory table in the `system` database) and fills it, when a query names it, with real values
(RSS, memory, load, uptime, disk space, MergeTree part/row/byte totals...). system.query_log,
system.part_log and system.error_log are enabled through an engine config file.

--log-file F: a server log in clickhouse-server.log's format (start, stop, and every failed query as
`executeQuery` <Error> with its `Code: N.`), for agents that tail the server's log.
--cold-disk DIR: a second disk "cold" at DIR and a storage policy "tiered" (default disk, then
cold), with no space held back (the disks are as full as their filesystems) and move_factor 0
(ClickHouse itself never moves parts between them: placement is left to whoever manages it).

Usage: server.py --port N (0 = free port) --data-dir DIR [--host 127.0.0.1] [--ready-file F]
Only needs chdb-core, lz4, zstandard and clickhouse-cityhash (see ./install).
"""

import argparse
import gzip
import http.server
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from urllib.parse import parse_qsl, urlsplit

import lz4.block
import lz4.frame
import zstandard
from clickhouse_cityhash.cityhash import CityHash128
from chdb import _chdb

ENGINE = {"version": "26.9", "display_name": socket.gethostname(), "timezone": "UTC"}

# URL parameters that the real server handles itself and never treats as settings.
HTTP_PARAMS = {
    "query", "database", "default_format", "compress", "decompress", "user", "password", "quota_key",
    "query_id", "stacktrace", "role", "buffer_size", "wait_end_of_query", "session_id", "session_timeout",
    "session_check", "client_protocol_version", "close_session", "readonly",
}
# Engine start-up options that must never be passed through a connection string.
FORBIDDEN_KEYS = {"path", "config", "config_file", "mode", "progress", "verbose", "log_level", "logger"}

MAX_QUERY_TEXT = 256 << 20
READ_CHUNK = 1 << 20
COMPRESSED_BLOCK = 1 << 20

# exceptionCodeToHTTPStatus of the real server, for the common codes.
HTTP_STATUS = {}
for _c in (6, 25, 26, 27, 38, 41, 53, 62, 69, 72, 117, 168, 169, 376, 441, 457):
    HTTP_STATUS[_c] = 400
for _c in (46, 47, 50, 56, 60, 63, 73, 81, 115, 336):
    HTTP_STATUS[_c] = 404
for _c in (164, 497):
    HTTP_STATUS[_c] = 403
for _c in (192, 193, 194, 516):
    HTTP_STATUS[_c] = 401
HTTP_STATUS[381] = 411
HTTP_STATUS[373] = 400  # SESSION_IS_LOCKED

CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsoncompacteachrow": "application/x-ndjson; charset=UTF-8",
    "jsonstrings": "application/json; charset=UTF-8",
    "xml": "application/xml; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8",
    "prettycompact": "text/plain; charset=UTF-8",
    "vertical": "text/plain; charset=UTF-8",
    "values": "text/plain; charset=UTF-8",
}


def log(*a):
    print("[chdb-http]", *a, file=sys.stderr, flush=True)


class ServerLog:
    """clickhouse-server.log's line format: `YYYY.MM.DD HH:MM:SS.ffffff [ tid ] {query_id} <Level> logger: text`."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else None
        self.lock = threading.Lock()

    def write(self, level, logger, text, query_id=""):
        if not self.f:
            return
        t = time.time()
        stamp = time.strftime("%Y.%m.%d %H:%M:%S", time.localtime(t)) + ".%06d" % int((t % 1) * 1e6)
        line = f"{stamp} [ {threading.get_native_id()} ] {{{query_id}}} <{level}> {logger}: {text}\n"
        with self.lock:
            self.f.write(line)


SERVER_LOG = ServerLog(None)


# ---------------------------------------------------------------------------------------------
# Errors


class CHError(Exception):
    def __init__(self, code, text, status=None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.status = status or HTTP_STATUS.get(code, 500)


_CODE_RE = re.compile(r"Code: (\d+)\. ")


def ch_error(exc):
    """Turns an engine exception into a CHError with ClickHouse's code and message."""
    if isinstance(exc, CHError):
        return exc
    msg = str(exc)
    m = _CODE_RE.search(msg)
    if not m:
        return CHError(1001, f"Code: 1001. DB::Exception: {msg.strip()} (STD_EXCEPTION)")
    code = int(m.group(1))
    text = msg[m.start():].strip()
    if "(version " not in text:
        text += f" (version {ENGINE['version']})"
    return CHError(code, text)


def make_error(code, name, message):
    return CHError(code, f"Code: {code}. DB::Exception: {message}. ({name}) (version {ENGINE['version']})")


# ---------------------------------------------------------------------------------------------
# Request body: Content-Length or chunked, then Content-Encoding, then decompress=1 blocks.


class BodyReader:
    def __init__(self, rfile, headers):
        self.rfile = rfile
        te = (headers.get("Transfer-Encoding") or "").lower()
        self.chunked = "chunked" in te
        cl = headers.get("Content-Length")
        self.remaining = int(cl) if (cl and not self.chunked) else (0 if not self.chunked else None)
        self.chunk_left = 0
        self.done = not self.chunked and self.remaining == 0

    def read(self, n=READ_CHUNK):
        """Returns up to n bytes; b'' at the end of the body."""
        if self.done:
            return b""
        if not self.chunked:
            data = self.rfile.read(min(n, self.remaining))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            self.remaining -= len(data)
            if self.remaining == 0:
                self.done = True
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection mid-body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers
                    t = self.rfile.readline(65537)
                    if t in (b"\r\n", b"\n", b""):
                        break
                self.done = True
                return b""
            self.chunk_left = size
        data = self.rfile.read(min(n, self.chunk_left))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(3)  # CRLF after the chunk
        return data

    def drain(self):
        try:
            while self.read():
                pass
            return True
        except Exception:
            return False

    def chunks(self):
        while True:
            d = self.read()
            if not d:
                return
            yield d


def content_decoded(chunks, encoding):
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        yield from chunks
        return
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(wbits=47)  # auto-detects gzip/zlib headers
    elif enc == "zstd":
        d = zstandard.ZstdDecompressor().decompressobj()
    elif enc == "lz4":
        d = lz4.frame.LZ4FrameDecompressor()
    else:
        raise make_error(1001, "STD_EXCEPTION", f"Unknown HTTP Content-Encoding: {encoding}")
    for c in chunks:
        out = d.decompress(c)
        if out:
            yield out
    if enc in ("gzip", "x-gzip", "deflate"):
        tail = d.flush()
        if tail:
            yield tail


def checksum(block):
    """ClickHouse's block checksum: CityHash128 (v1.0.2) of header+data as two little-endian u64,
    first the half that clickhouse-cityhash returns in the high bits."""
    h = CityHash128(block)
    return struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF)


def native_decompressed(chunks):
    """Decodes a stream of ClickHouse native compressed blocks (as sent with decompress=1)."""
    buf = bytearray()
    for c in chunks:
        buf += c
        while len(buf) >= 25:
            method = buf[16]
            csize, usize = struct.unpack_from("<II", buf, 17)
            if csize < 9 or csize > (1 << 30):
                raise make_error(271, "CANNOT_DECOMPRESS", f"Too large size_compressed_without_checksum: {csize}")
            if len(buf) < 16 + csize:
                break
            block = bytes(buf[16:16 + csize])
            if bytes(buf[:16]) != checksum(block):
                raise make_error(40, "CHECKSUM_DOESNT_MATCH",
                                 "Checksum doesn't match: corrupted data. Reference: "
                                 f"{buf[:16].hex()}, actual: {checksum(block).hex()}")
            del buf[:16 + csize]
            payload = block[9:]
            if method == 0x82:
                out = lz4.block.decompress(payload, uncompressed_size=usize)
            elif method == 0x90:
                out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=usize)
            elif method == 0x02:
                out = payload
            else:
                raise make_error(271, "CANNOT_DECOMPRESS", f"Unknown compression method: {method:#x}")
            if out:
                yield out
    if buf:
        raise make_error(271, "CANNOT_DECOMPRESS", f"Cannot decompress: {len(buf)} trailing bytes")


def native_compressed(data):
    """Splits data into ClickHouse LZ4 compressed blocks (compress=1 responses)."""
    out = bytearray()
    for i in range(0, len(data), COMPRESSED_BLOCK):
        part = data[i:i + COMPRESSED_BLOCK]
        comp = lz4.block.compress(part, store_size=False)
        block = struct.pack("<BII", 0x82, len(comp) + 9, len(part)) + comp
        out += checksum(block) + block
    return bytes(out)


def http_encode(data, accept_encoding, level):
    """Chooses a Content-Encoding from Accept-Encoding the way the server does; returns (enc, body)."""
    offered = [p.split(";")[0].strip().lower() for p in (accept_encoding or "").split(",")]
    for enc in offered:
        if enc == "lz4":
            return "lz4", lz4.frame.compress(data)
        if enc == "zstd":
            return "zstd", zstandard.ZstdCompressor(level=max(1, min(level, 22))).compress(data)
        if enc in ("gzip", "x-gzip"):
            return "gzip", gzip.compress(data, compresslevel=max(1, min(level, 9)))
        if enc == "deflate":
            return "deflate", zlib.compress(data, max(1, min(level, 9)))
    return None, data


def parse_multipart(body, content_type):
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise make_error(1001, "STD_EXCEPTION", "multipart/form-data without boundary")
    boundary = b"--" + m.group(1).encode()
    fields = {}
    for part in body.split(boundary)[1:]:
        if part.startswith(b"--"):
            break
        part = part[2:] if part.startswith(b"\r\n") else part
        head, _, value = part.partition(b"\r\n\r\n")
        if value.endswith(b"\r\n"):
            value = value[:-2]
        nm = re.search(rb'name="([^"]*)"', head)
        if not nm:
            continue
        if re.search(rb'filename="', head):
            raise make_error(48, "NOT_IMPLEMENTED", "External data tables are not supported by this test front")
        fields[nm.group(1).decode()] = value.decode("utf-8")
    return fields


# ---------------------------------------------------------------------------------------------
# SQL helpers

_LEAD = r"(?:\s+|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|/\*.*?\*/)*"
INSERT_RE = re.compile(r"^" + _LEAD + r"INSERT\s+INTO\b", re.I | re.S)
FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)", re.I)
VALUES_RE = re.compile(r"\bVALUES\b", re.I)
SELECT_RE = re.compile(r"\b(SELECT|WITH)\b", re.I)
TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)(?:\s+SETTINGS\s[^;]*)?\s*;?\s*$", re.I)
ASYNC_METRICS_RE = re.compile(r"asynchronous_metrics\b", re.I)


def split_insert(prefix):
    """For an INSERT ... FORMAT X <data>, returns (sql_without_format, X, offset_of_data) from the
    latin-1 text of the first bytes of the query stream; None for anything else."""
    if not INSERT_RE.match(prefix):
        return None
    fm = FORMAT_RE.search(prefix)
    if not fm:
        return None
    vm = VALUES_RE.search(prefix, 0, fm.start())
    sm = SELECT_RE.search(prefix, 0, fm.start())
    if vm or sm:
        return None
    i = fm.end()
    while i < len(prefix) and prefix[i] in " \t\f":
        i += 1
    if i < len(prefix) and prefix[i] == "\r":
        i += 1
    if i < len(prefix) and prefix[i] == "\n":
        i += 1
    sql = prefix[:fm.start()].encode("latin-1").decode("utf-8")
    return sql, fm.group(1), i


# ---------------------------------------------------------------------------------------------
# Engine


# ClickHouse's in-memory Keeper stand-in: replicated tables can be created and show up in
# system.replicas, but stay read-only, since the embedded engine has no interserver address to
# replicate with.
TEST_KEEPER = "  <zookeeper><implementation>testkeeper</implementation></zookeeper>\n"


class Engine:
    def tiered_config(self):
        """A second disk ("cold") and a policy "tiered" over both, for partition-move tests; a third
        disk "warm" with half of cold's room, and a policy "three_tier" of volumes v_hot (default),
        v_warm (warm) and v_cold (cold), for moves between volumes. The
        default disk keeps all but a sliver of the filesystem's free space in reserve, so it looks
        nearly full and the cold disk roomy, as in a real hot/cold setup. The sliver is sized from
        the space already used (not from the free space), so that the default disk looks less than
        5 % free whether the machine's disk is nearly empty or nearly full."""
        st = os.statvfs(self.data_dir)
        used = (st.f_blocks - st.f_bavail) * st.f_frsize
        if used < 256 << 20:
            # A nearly empty filesystem (a fresh tmpfs) has no used space to size the sliver from:
            # a ballast file gives it some, so the default disk can look full yet hold the inserts.
            with open(os.path.join(self.data_dir, "ballast"), "wb") as f:
                os.posix_fallocate(f.fileno(), 0, (256 << 20) - used)
            st = os.statvfs(self.data_dir)
            used = (st.f_blocks - st.f_bavail) * st.f_frsize
        free = st.f_bavail * st.f_frsize
        sliver = max(1 << 20, min(256 << 20, used // 50))
        keep = max(0, free - sliver)
        os.makedirs(os.path.join(self.data_dir, "cold"), exist_ok=True)
        os.makedirs(os.path.join(self.data_dir, "warm"), exist_ok=True)
        return (
            "  <storage_configuration>\n"
            "    <disks>\n"
            "      <default><keep_free_space_bytes>%d</keep_free_space_bytes></default>\n"
            "      <cold><path>%s/cold/</path></cold>\n"
            "      <warm><path>%s/warm/</path><keep_free_space_bytes>%d</keep_free_space_bytes></warm>\n"
            "    </disks>\n"
            "    <policies>"
            "<tiered><volumes><hot><disk>default</disk></hot><cold><disk>cold</disk></cold></volumes></tiered>"
            "<three_tier><volumes><v_hot><disk>default</disk></v_hot><v_warm><disk>warm</disk></v_warm>"
            "<v_cold><disk>cold</disk></v_cold></volumes><move_factor>0</move_factor></three_tier>"
            "</policies>\n"
            "  </storage_configuration>\n" % (keep, self.data_dir, self.data_dir, free // 2)
        )

    def cold_disk_config(self, cold):
        os.makedirs(cold, exist_ok=True)
        return (
            "  <storage_configuration>\n"
            "    <disks><cold><path>%s/</path></cold></disks>\n"
            "    <policies><tiered><volumes>"
            "<hot><disk>default</disk></hot><cold><disk>cold</disk></cold>"
            "</volumes><move_factor>0</move_factor></tiered></policies>\n"
            "  </storage_configuration>\n" % os.path.abspath(cold)
        )

    def __init__(self, data_dir, max_queries, tiered=False, cold_disk=None, test_keeper=False):
        self.data_dir = os.path.abspath(data_dir)
        if any(ch in self.data_dir for ch in "?&#"):
            raise SystemExit("--data-dir must not contain ?, & or #")
        os.makedirs(self.data_dir, exist_ok=True)
        cfg = os.path.join(self.data_dir, "medic-chdb-config.xml")
        with open(cfg, "w") as f:
            f.write(
                "<clickhouse>\n"
                "  <display_name>%s</display_name>\n"
                "  <query_log><database>system</database><table>query_log</table>"
                "<flush_interval_milliseconds>7500</flush_interval_milliseconds></query_log>\n"
                "  <part_log><database>system</database><table>part_log</table>"
                "<flush_interval_milliseconds>7500</flush_interval_milliseconds></part_log>\n"
                "  <error_log><database>system</database><table>error_log</table>"
                "<flush_interval_milliseconds>7500</flush_interval_milliseconds></error_log>\n"
                "%s%s"
                "</clickhouse>\n" % (ENGINE["display_name"], self.tiered_config() if tiered else self.cold_disk_config(cold_disk) if cold_disk else "",
                                      TEST_KEEPER if test_keeper else ""))
        self.started = time.time()
        # The master connection starts the engine and keeps it alive for the server's lifetime.
        self.master = _chdb.connect(f"file:{self.data_dir}?config-file={cfg}")
        row = self.query_text("SELECT version(), timezone()")
        ENGINE["version"], ENGINE["timezone"] = row.split("\t")
        self.settings = set(self.query_text("SELECT name FROM system.settings").split("\n"))
        self.sem = threading.BoundedSemaphore(max_queries)
        self.sessions = {}
        self.sessions_lock = threading.Lock()
        self.async_lock = threading.Lock()
        self.async_refreshed = 0.0
        self.query_text("CREATE TABLE IF NOT EXISTS system.asynchronous_metrics "
                        "(metric String, value Float64, description String) ENGINE = Memory")

    def query_text(self, sql, conn=None):
        r = (conn or self.master).query(sql, "TabSeparatedRaw")
        return bytes(r.bytes()).decode().rstrip("\n")

    def close(self):
        with self.sessions_lock:
            for s in self.sessions.values():
                try:
                    s["conn"].close()
                except Exception:
                    pass
            self.sessions.clear()
        try:
            self.master.close()
        except Exception:
            pass

    # -- connections --------------------------------------------------------------------------

    def connect(self, settings, database, readonly):
        """A fresh connection with the request's settings (the engine applies them like SET)."""
        parts, late = [], []
        for k, v in settings.items():
            if any(c in v for c in "&\r\n\x00#"):
                late.append((k, v))
            else:
                parts.append(f"{k}={v}")
        if database:
            if any(c in database for c in "&\r\n\x00#?="):
                raise make_error(81, "UNKNOWN_DATABASE", f"Database {database} does not exist")
            parts.append(f"database={database}")
        if readonly and not late:
            parts.append(f"readonly={readonly}")
        cs = f"file:{self.data_dir}" + ("?" + "&".join(parts) if parts else "")
        try:
            conn = _chdb.connect(cs)
        except Exception as e:
            raise ch_error(e)
        try:
            for k, v in late:
                conn.query(f"SET {k} = '" + v.replace("\\", "\\\\").replace("'", "\\'") + "'", "TSV")
            if readonly and late:
                conn.query(f"SET readonly = {int(readonly)}", "TSV")
        except Exception as e:
            conn.close()
            raise ch_error(e)
        return conn

    def session(self, sid, timeout, settings, database, check):
        now = time.time()
        with self.sessions_lock:
            for k in [k for k, s in self.sessions.items() if s["expires"] < now and not s["lock"].locked()]:
                try:
                    self.sessions.pop(k)["conn"].close()
                except Exception:
                    pass
            s = self.sessions.get(sid)
            if s is None:
                if check:
                    raise make_error(372, "SESSION_NOT_FOUND", f"Session {sid} not found")
                s = {"conn": self.connect({}, None, None), "lock": threading.Lock(), "expires": 0}
                self.sessions[sid] = s
            s["expires"] = now + timeout
        if not s["lock"].acquire(blocking=False):
            raise make_error(373, "SESSION_IS_LOCKED", f"Session {sid} is locked by a concurrent client")
        try:
            if database:
                s["conn"].query(f"USE `{database.replace('`', '')}`", "TSV")
            for k, v in settings.items():
                s["conn"].query(f"SET {k} = '" + v.replace("\\", "\\\\").replace("'", "\\'") + "'", "TSV")
        except Exception as e:
            s["lock"].release()
            raise ch_error(e)
        return s

    # -- system.asynchronous_metrics ----------------------------------------------------------

    def refresh_async_metrics(self):
        if time.time() - self.async_refreshed < 1.0:
            return
        t0 = time.time()
        vals = []

        def add(name, value, desc):
            vals.append((name, float(value), desc))

        page = os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/self/statm") as f:
                st = [int(x) for x in f.read().split()]
            add("MemoryVirtual", st[0] * page, "The size of the virtual address space allocated by the server process, in bytes.")
            add("MemoryResident", st[1] * page, "The amount of physical memory used by the server process, in bytes.")
            add("MemoryShared", st[2] * page, "The amount of memory used by the server process, that is also shared by another processes, in bytes.")
            add("MemoryCode", st[3] * page, "The amount of virtual memory mapped for the pages of machine code of the server process, in bytes.")
        except OSError:
            pass
        try:
            mi = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    k, v = line.split(":", 1)
                    mi[k] = int(v.split()[0]) * 1024
            add("OSMemoryTotal", mi.get("MemTotal", 0), "The total amount of memory on the host system, in bytes.")
            add("OSMemoryAvailable", mi.get("MemAvailable", 0), "The amount of memory available to be used by programs, in bytes.")
            add("OSMemoryFreeWithoutCached", mi.get("MemFree", 0), "The amount of free memory on the host system, in bytes.")
            add("OSMemoryCached", mi.get("Cached", 0), "The amount of memory used by the OS page cache, in bytes.")
            add("OSMemoryBuffers", mi.get("Buffers", 0), "The amount of memory used by OS kernel buffers, in bytes.")
        except OSError:
            pass
        try:
            l1, l5, l15 = os.getloadavg()
            add("LoadAverage1", l1, "The whole system load, averaged with exponential smoothing over 1 minute.")
            add("LoadAverage5", l5, "The whole system load, averaged with exponential smoothing over 5 minutes.")
            add("LoadAverage15", l15, "The whole system load, averaged with exponential smoothing over 15 minutes.")
            with open("/proc/uptime") as f:
                add("OSUptime", float(f.read().split()[0]), "The uptime of the host server (the machine where ClickHouse is running), in seconds.")
        except OSError:
            pass
        add("Uptime", time.time() - self.started, "The server uptime in seconds.")
        add("NumberOfCPUCores", os.cpu_count() or 1, "The number of CPU cores.")
        sv = os.statvfs(self.data_dir)
        total, avail = sv.f_blocks * sv.f_frsize, sv.f_bavail * sv.f_frsize
        for prefix in ("FilesystemMainPath",):
            add(prefix + "TotalBytes", total, "The size of the volume where the main ClickHouse path is mounted, in bytes.")
            add(prefix + "AvailableBytes", avail, "Available bytes on the volume where the main ClickHouse path is mounted.")
            add(prefix + "UsedBytes", total - avail, "Used bytes on the volume where the main ClickHouse path is mounted.")
            add(prefix + "TotalINodes", sv.f_files, "The total number of inodes on the volume where the main ClickHouse path is mounted.")
            add(prefix + "AvailableINodes", sv.f_favail, "The number of available inodes on the volume where the main ClickHouse path is mounted.")
            add(prefix + "UsedINodes", sv.f_files - sv.f_favail, "The number of used inodes on the volume where the main ClickHouse path is mounted.")
        add("DiskTotal_default", total, "The total size in bytes of the disk (virtual filesystem).")
        add("DiskAvailable_default", avail, "Available bytes on the disk (virtual filesystem).")
        add("DiskUsed_default", total - avail, "Used bytes on the disk (virtual filesystem).")
        add("DiskUnreserved_default", avail, "Available bytes on the disk (virtual filesystem) without the reservations for merges, fetches, and moves.")
        row = self.query_text(
            "SELECT count(), sum(rows), sum(bytes_on_disk), "
            "(SELECT max(c) FROM (SELECT count() AS c FROM system.parts WHERE active GROUP BY database, table, partition_id)), "
            "(SELECT count() FROM system.databases), "
            "(SELECT count() FROM system.tables WHERE database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema')), "
            "(SELECT count() FROM system.detached_parts), "
            "(SELECT countIf(reason = '') FROM system.detached_parts) "
            "FROM system.parts WHERE active SETTINGS log_queries = 0")
        parts, rows, nbytes, maxparts, ndb, ntables, ndet, ndetuser = [float(x or 0) for x in row.split("\t")]
        add("TotalPartsOfMergeTreeTables", parts, "Total amount of data parts in all tables of MergeTree family.")
        add("TotalRowsOfMergeTreeTables", rows, "Total amount of rows (records) stored in all tables of MergeTree family.")
        add("TotalBytesOfMergeTreeTables", nbytes, "Total amount of bytes (compressed, including data and indices) stored in all tables of MergeTree family.")
        add("MaxPartCountForPartition", maxparts, "Maximum number of parts per partition across all partitions of all tables of MergeTree family.")
        add("NumberOfDatabases", ndb, "Total number of databases on the server.")
        add("NumberOfTables", ntables, "Total number of tables summed across the databases on the server, excluding the databases that cannot contain MergeTree tables.")
        add("NumberOfDetachedParts", ndet, "The total number of parts detached from MergeTree tables.")
        add("NumberOfDetachedByUserParts", ndetuser, "The total number of parts detached from MergeTree tables by users with the `ALTER TABLE DETACH` query.")
        for n in ("ReplicasMaxQueueSize", "ReplicasSumQueueSize", "ReplicasMaxInsertsInQueue", "ReplicasSumInsertsInQueue",
                  "ReplicasMaxMergesInQueue", "ReplicasSumMergesInQueue", "ReplicasMaxAbsoluteDelay", "ReplicasMaxRelativeDelay"):
            add(n, 0, "Replicated tables: always 0 here (no replication in the embedded engine).")
        add("AsynchronousMetricsCalculationTimeSpent", time.time() - t0, "Time in seconds spent for calculation of asynchronous metrics (this is the overhead of asynchronous metrics).")
        lines = []
        for name, value, desc in vals:
            lines.append(json.dumps({"metric": name, "value": value, "description": desc}))
        self.master.query("TRUNCATE TABLE system.asynchronous_metrics SETTINGS log_queries = 0", "TSV")
        ins = self.master.send_insert("INSERT INTO system.asynchronous_metrics SETTINGS log_queries = 0", "JSONEachRow")
        self.master.insert_append(ins, ("\n".join(lines) + "\n").encode())
        self.master.insert_done(ins)
        self.async_refreshed = time.time()


# ---------------------------------------------------------------------------------------------
# HTTP


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers (~40 ms) on every other request of a keep-alive connection.
    disable_nagle_algorithm = True
    server_version = "ClickHouse"
    sys_version = ""
    engine = None  # set in main()

    def log_message(self, fmt, *args):  # quiet
        pass

    def version_string(self):
        return "ClickHouse"

    # -- plumbing ------------------------------------------------------------------------------

    def send_body(self, status, body, headers=(), content_type="text/plain; charset=UTF-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", ENGINE["display_name"])
        self.send_header("X-ClickHouse-Timezone", ENGINE["timezone"])
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", "timeout=30")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error_response(self, err, query_id, fmt):
        body = (err.text.rstrip("\n") + "\n").encode()
        self.send_body(err.status, body, [
            ("X-ClickHouse-Exception-Code", str(err.code)),
            ("X-ClickHouse-Query-Id", query_id),
            ("X-ClickHouse-Format", fmt),
            ("X-ClickHouse-Summary", json.dumps(summary(), separators=(",", ":"))),
        ])

    def do_GET(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def do_HEAD(self):
        self.handle_request()

    def do_PUT(self):
        self.handle_request()

    # -- the request ---------------------------------------------------------------------------

    def handle_request(self):
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        path = url.path.rstrip("/") or "/"
        body = BodyReader(self.rfile, self.headers)
        if path in ("/ping", "/replicas_status") or (path == "/" and "query" not in params and self.command in ("GET", "HEAD")):
            body.drain()
            self.send_body(200, b"Ok.\n")
            return
        query_id = params.get("query_id") or self.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        fmt = params.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"
        try:
            self.run(params, body, query_id, fmt)
        except CHError as e:
            SERVER_LOG.write("Error", "executeQuery", f"{e.text} (from {self.client_address[0]}:{self.client_address[1]})", query_id)
            if not body.drain():
                self.close_connection = True
            self.send_error_response(e, query_id, fmt)
        except (ConnectionError, BrokenPipeError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # engine errors and anything unexpected
            err = ch_error(e)
            SERVER_LOG.write("Error", "executeQuery", f"{err.text} (from {self.client_address[0]}:{self.client_address[1]})", query_id)
            if not body.drain():
                self.close_connection = True
            self.send_error_response(err, query_id, fmt)

    def run(self, params, body, query_id, fmt):
        eng = self.engine
        ctype = self.headers.get("Content-Type") or ""
        raw_chunks = body.chunks()
        if ctype.lower().startswith("multipart/form-data"):
            data = b"".join(content_decoded(raw_chunks, self.headers.get("Content-Encoding")))
            params.update(parse_multipart(data, ctype))
            stream = iter(())
        else:
            stream = content_decoded(raw_chunks, self.headers.get("Content-Encoding"))
            if params.get("decompress") in ("1", "true"):
                stream = native_decompressed(stream)

        # Settings, query parameters and the rest.
        qparams, settings = {}, {}
        for k, v in params.items():
            if k.startswith("param_"):
                qparams[k[6:]] = v
            elif k in HTTP_PARAMS:
                continue
            else:
                if k in FORBIDDEN_KEYS or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) or (
                        k not in eng.settings and not k.startswith("custom_")):
                    raise make_error(115, "UNKNOWN_SETTING",
                                     f"Setting {k} is neither a builtin setting nor started with the prefix "
                                     f"'custom_' registered for user-defined settings")
                settings[k] = v
        database = params.get("database") or self.headers.get("X-ClickHouse-Database")
        readonly = params.get("readonly")
        if self.command in ("GET", "HEAD") and readonly in (None, "", "0"):
            readonly = "2"  # GET queries cannot change data, like on the real server
        enable_compression = settings.get("enable_http_compression", "1") not in ("0", "false")
        level = int(settings.get("http_zlib_compression_level", "3") or 3)

        # The query text: URL part, "\n", then the body (which may start with the rest of the query).
        url_query = params.get("query", "")
        first = b""
        for c in stream:
            first += c
            if len(first) >= 65536:
                break
        if url_query and first:
            head = url_query.encode() + b"\n" + first
        else:
            head = url_query.encode() + first
        if not head.strip():
            raise make_error(62, "SYNTAX_ERROR", "Empty query")
        ins = split_insert(head.decode("latin-1"))

        sid = params.get("session_id")
        t0 = time.time()
        with eng.sem:
            if sid:
                sess = eng.session(sid, float(params.get("session_timeout") or 60), settings, database,
                                   params.get("session_check") in ("1", "true"))
                conn = sess["conn"]
            else:
                sess = None
                conn = eng.connect(settings, database, readonly)
            try:
                if sess and readonly not in (None, "", "0"):
                    cls = conn.classify_query(head.decode("utf-8", "replace") if not ins else ins[0])
                    if int(cls["query_class"]) != 0:
                        raise make_error(164, "READONLY", "default: Cannot execute query in readonly mode")
                if ins:
                    sql, in_fmt, off = ins
                    result = self.do_insert(conn, sql, in_fmt, head[off:], stream)
                    out_fmt = fmt
                    out = b""
                else:
                    rest = b"".join(stream)
                    text = (head + rest)
                    if len(text) > MAX_QUERY_TEXT:
                        raise make_error(1001, "STD_EXCEPTION", "Query is too large for this test front")
                    sql = text.decode("utf-8", "replace")
                    m = TRAILING_FORMAT_RE.search(sql[-400:])
                    out_fmt = m.group(1) if m else fmt
                    if ASYNC_METRICS_RE.search(sql):
                        with eng.async_lock:
                            eng.refresh_async_metrics()
                            result = conn.query(sql, fmt, params=qparams)
                    else:
                        result = conn.query(sql, fmt, params=qparams)
                    out = bytes(result.bytes())
            finally:
                if sess:
                    sess["lock"].release()
                else:
                    conn.close()

        elapsed_ns = int((time.time() - t0) * 1e9)
        summ = summary(result, elapsed_ns, ins is not None)
        headers = [
            ("X-ClickHouse-Query-Id", query_id),
            ("X-ClickHouse-Format", out_fmt),
            ("X-ClickHouse-Summary", json.dumps(summ, separators=(",", ":"))),
        ]
        if sid:
            headers.append(("X-ClickHouse-Session-Id", sid))
        if params.get("compress") in ("1", "true"):
            out = native_compressed(out)
        if enable_compression and out:
            enc, out = http_encode(out, self.headers.get("Accept-Encoding"), level)
            if enc:
                headers.append(("Content-Encoding", enc))
        self.send_body(200, out, headers,
                       CONTENT_TYPES.get(out_fmt.lower(), "application/octet-stream")
                       if not params.get("compress") in ("1", "true") else "application/octet-stream")

    def do_insert(self, conn, sql, in_fmt, first, stream):
        try:
            h = conn.send_insert(sql, in_fmt)
        except Exception as e:
            raise ch_error(e)
        try:
            if first:
                conn.insert_append(h, bytes(first))
            for c in stream:
                conn.insert_append(h, bytes(c))
            return conn.insert_done(h)
        except BaseException as e:
            try:
                conn.insert_cancel(h)
            except Exception:
                pass
            if isinstance(e, (CHError, ConnectionError, OSError)):
                raise
            raise ch_error(e)


def summary(result=None, elapsed_ns=0, insert=False):
    def g(name):
        try:
            return int(getattr(result, name)())
        except Exception:
            return 0

    if result is None:
        vals = dict(read_rows=0, read_bytes=0, written_rows=0, written_bytes=0, result_rows=0, result_bytes=0)
    elif insert:
        vals = dict(read_rows=g("rows_written"), read_bytes=g("bytes_written"), written_rows=g("rows_written"),
                    written_bytes=g("bytes_written"), result_rows=g("rows_written"), result_bytes=g("bytes_written"))
    else:
        vals = dict(read_rows=g("storage_rows_read"), read_bytes=g("storage_bytes_read"),
                    written_rows=g("rows_written"), written_bytes=g("bytes_written"),
                    result_rows=g("rows_read"), result_bytes=g("bytes_read"))
    vals.update(total_rows_to_read=vals["read_rows"], elapsed_ns=elapsed_ns, memory_usage=0)
    return {k: str(v) for k, v in vals.items()}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--ready-file", help="the port is written here once the server accepts connections")
    ap.add_argument("--max-queries", type=int, default=8, help="queries run at once (1 = serialised)")
    ap.add_argument("--tiered-disks", action="store_true", help="add a 'cold' disk and a 'tiered' storage policy")
    ap.add_argument("--cold-disk", help="a second disk 'cold' at this directory and a 'tiered' policy, nothing held back")
    ap.add_argument("--test-keeper", action="store_true",
                    help="ClickHouse's in-memory test Keeper: replicated tables can be created (they stay read-only)")
    ap.add_argument("--log-file", help="write a server log in clickhouse-server.log's format here")
    args = ap.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.host.startswith("127."):
        raise SystemExit("this test server binds loopback addresses only")

    t0 = time.time()
    global SERVER_LOG
    SERVER_LOG = ServerLog(args.log_file)
    SERVER_LOG.write("Information", "Application", f"Starting ClickHouse (chdb), data {args.data_dir}, PID {os.getpid()}")
    engine = Engine(args.data_dir, max(1, args.max_queries), tiered=args.tiered_disks, cold_disk=args.cold_disk,
                    test_keeper=args.test_keeper)
    Handler.engine = engine
    httpd = Server((args.host, args.port), Handler)
    port = httpd.server_address[1]

    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.ready_file)
    log(f"ClickHouse {ENGINE['version']} (chdb), data {engine.data_dir}, started in {time.time() - t0:.2f}s")
    print(f"listening on {args.host}:{port}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        # Let running queries finish (bounded), then close the engine cleanly.
        for _ in range(50):
            if engine.sem._value == max(1, args.max_queries):
                break
            time.sleep(0.1)
        engine.close()
        SERVER_LOG.write("Information", "Application", "shutting down")
        log("stopped")


if __name__ == "__main__":
    main()
