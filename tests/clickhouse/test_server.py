"""Tests of tests/clickhouse/server.py against the real ClickHouse 26.9 engine (chdb-core).

Run: python3 -m unittest tests/clickhouse/test_server.py     (or python3 tests/clickhouse/test_server.py)
The engine is installed by tests/clickhouse/install if needed; the test re-runs itself under that
venv's python when the running one lacks lz4/clickhouse-cityhash (used to build and check
ClickHouse compressed blocks here).
"""

import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from urllib.parse import urlencode

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")


def venv_python():
    py = os.environ.get("MEDIC_CHDB_PYTHON")
    if py:
        return py
    out = subprocess.run([os.path.join(HERE, "install")], check=True, stdout=subprocess.PIPE).stdout
    return out.decode().strip().splitlines()[-1]


try:
    import lz4.block
    import zstandard
    from clickhouse_cityhash.cityhash import CityHash128
except ImportError:
    if os.environ.get("MEDIC_CHDB_REEXEC"):
        raise
    PY = venv_python()
    os.environ["MEDIC_CHDB_REEXEC"] = "1"
    os.environ["MEDIC_CHDB_PYTHON"] = PY
    if sys.argv[0].endswith("-m unittest"):
        argv = [PY, "-m", "unittest"] + sys.argv[1:]
    else:
        argv = [PY] + sys.argv
    sys.stdout.flush()
    os.execv(PY, argv)

PY = os.environ.get("MEDIC_CHDB_PYTHON") or sys.executable


# ---------------------------------------------------------------------------------------------
# helpers


def checksum(block):
    h = CityHash128(block)
    return struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF)


def compress_blocks(data, method="lz4", block_size=64 << 10):
    out = bytearray()
    for i in range(0, max(len(data), 1), block_size):
        part = data[i:i + block_size]
        if method == "lz4":
            m, comp = 0x82, lz4.block.compress(part, store_size=False)
        elif method == "zstd":
            m, comp = 0x90, zstandard.ZstdCompressor().compress(part)
        else:
            m, comp = 0x02, part
        block = struct.pack("<BII", m, len(comp) + 9, len(part)) + comp
        out += checksum(block) + block
    return bytes(out)


def decompress_blocks(data):
    out, i = bytearray(), 0
    while i < len(data):
        csum = data[i:i + 16]
        method, csize, usize = struct.unpack_from("<BII", data, i + 16)
        block = data[i + 16:i + 16 + csize]
        assert csum == checksum(block), "bad checksum in response block"
        assert method == 0x82, hex(method)
        out += lz4.block.decompress(block[9:], uncompressed_size=usize)
        i += 16 + csize
    return bytes(out)


def leb128(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def rb_string(s):
    b = s.encode()
    return leb128(len(b)) + b


class Reader:
    def __init__(self, data):
        self.d, self.i = data, 0

    def uvarint(self):
        n = shift = 0
        while True:
            b = self.d[self.i]
            self.i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def string(self):
        n = self.uvarint()
        s = self.d[self.i:self.i + n].decode()
        self.i += n
        return s

    def unpack(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.i)
        self.i += struct.calcsize(fmt)
        return v[0]

    def done(self):
        return self.i >= len(self.d)


# Rows of table `m`: (ts DateTime64(3), host LowCardinality(String), v Float64, n UInt64)
def make_rows(start, count):
    return [(1_790_000_000_000 + i * 1000, f"host-{i % 5}", i * 0.25, i) for i in range(start, start + count)]


def rowbinary(rows):
    out = bytearray()
    for ts, host, v, n in rows:
        out += struct.pack("<q", ts) + rb_string(host) + struct.pack("<dQ", v, n)
    return bytes(out)


def parse_rbwnat(data):
    r = Reader(data)
    ncols = r.uvarint()
    names = [r.string() for _ in range(ncols)]
    types = [r.string() for _ in range(ncols)]
    rows = []
    readers = {
        "DateTime64(3)": lambda: r.unpack("<q"),
        "LowCardinality(String)": r.string,
        "String": r.string,
        "Float64": lambda: r.unpack("<d"),
        "UInt64": lambda: r.unpack("<Q"),
        "UInt32": lambda: r.unpack("<I"),
    }
    while not r.done():
        rows.append(tuple(readers[t]() for t in types))
    return names, types, rows


class Srv:
    """server.py in a subprocess on a free port."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.ready = os.path.join(data_dir + ".ready")
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.log = open(data_dir + ".log", "ab")
        self.proc = subprocess.Popen(
            [PY, SERVER, "--port", "0", "--data-dir", data_dir, "--ready-file", self.ready],
            stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        try:
            if not line.startswith("listening on 127.0.0.1:"):
                raise RuntimeError(f"server did not start: {line!r}, see {data_dir}.log")
            self.port = int(line.strip().rsplit(":", 1)[1])
            with open(self.ready) as f:
                assert int(f.read()) == self.port
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc.stdout.close()
        self.log.close()
        return rc

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def request(self, method="POST", params=None, body=None, headers=None, conn=None, chunked=False):
        c = conn or self.conn()
        path = "/?" + urlencode(params or {})
        c.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r, data

    def q(self, sql, **params):
        """Runs sql, returns the body; fails the test on an error response."""
        r, data = self.request(params={"query": sql, **params})
        if r.status != 200:
            raise AssertionError(f"{sql!r} -> HTTP {r.status}: {data.decode(errors='replace')}")
        return data


# ---------------------------------------------------------------------------------------------


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="chdb-front-")
        cls.srv = Srv(os.path.join(cls.tmp.name, "data"))

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        cls.tmp.cleanup()
        assert rc == 0, f"server exit code {rc}"

    def create_m(self, name):
        self.srv.q(f"""CREATE TABLE {name} (
                ts DateTime64(3) CODEC(DoubleDelta, ZSTD(1)),
                host LowCardinality(String),
                v Float64 CODEC(Gorilla, ZSTD(3)),
                n UInt64 CODEC(Delta, ZSTD)
            ) ENGINE = MergeTree ORDER BY (host, ts)
            TTL toDateTime(ts) + INTERVAL 3650 DAY""")

    def select_all(self, name):
        data = self.srv.q(f"SELECT ts, host, v, n FROM {name} ORDER BY n",
                          default_format="RowBinaryWithNamesAndTypes")
        return parse_rbwnat(data)

    def insert_rb(self, name, body, **params):
        return self.srv.request(params={"query": f"INSERT INTO {name} FORMAT RowBinary", **params}, body=body)

    # -- basics ---------------------------------------------------------------------------------

    def test_ping(self):
        for path in ("/ping", "/"):
            c = self.srv.conn()
            c.request("GET", path)
            r = c.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"Ok.\n"))
            c.close()

    def test_ping_answers_while_a_query_runs(self):
        done = []
        t = threading.Thread(target=lambda: done.append(self.srv.q("SELECT sleep(2)")))
        t.start()
        time.sleep(0.3)
        t0 = time.time()
        c = self.srv.conn()
        c.request("GET", "/ping")
        self.assertEqual(c.getresponse().read(), b"Ok.\n")
        c.close()
        self.assertLess(time.time() - t0, 1.0)
        self.assertEqual(self.srv.q("SELECT 42"), b"42\n")
        self.assertFalse(done, "the slow query should still be running")
        t.join()
        self.assertEqual(done, [b"0\n"])

    def test_create_table_with_ttl_and_codecs(self):
        self.create_m("codecs")
        cols = self.srv.q("SELECT name, type, compression_codec FROM system.columns "
                          "WHERE database = currentDatabase() AND table = 'codecs' ORDER BY position").decode()
        self.assertEqual(cols.splitlines(), [
            "ts\tDateTime64(3)\tCODEC(DoubleDelta, ZSTD(1))",
            "host\tLowCardinality(String)\t",
            "v\tFloat64\tCODEC(Gorilla(8), ZSTD(3))",
            "n\tUInt64\tCODEC(Delta(8), ZSTD(1))",
        ])
        engine = self.srv.q("SELECT engine_full FROM system.tables WHERE name = 'codecs'").decode()
        self.assertIn("TTL toDateTime(ts) + toIntervalDay(3650)", engine)

    # -- inserts ------------------------------------------------------------------------------------

    def test_insert_rowbinary_plain(self):
        self.create_m("ins_plain")
        rows = make_rows(0, 1000)
        r, data = self.insert_rb("ins_plain", rowbinary(rows))
        self.assertEqual(r.status, 200, data)
        summary = json.loads(r.getheader("X-ClickHouse-Summary"))
        self.assertEqual(summary["written_rows"], "1000")
        names, types, got = self.select_all("ins_plain")
        self.assertEqual(names, ["ts", "host", "v", "n"])
        self.assertEqual(types, ["DateTime64(3)", "LowCardinality(String)", "Float64", "UInt64"])
        self.assertEqual(got, rows)

    def test_insert_rowbinary_lz4_blocks(self):
        self.create_m("ins_lz4")
        rows = make_rows(0, 50_000)
        body = compress_blocks(rowbinary(rows), "lz4")
        r, data = self.insert_rb("ins_lz4", body, decompress="1")
        self.assertEqual(r.status, 200, data)
        self.assertEqual(self.select_all("ins_lz4")[2], rows)

    def test_insert_zstd_and_uncompressed_blocks(self):
        self.create_m("ins_zstd")
        rows = make_rows(0, 3000)
        for method in ("zstd", "none"):
            r, data = self.insert_rb("ins_zstd", compress_blocks(rowbinary(rows), method), decompress="1")
            self.assertEqual(r.status, 200, data)
        self.assertEqual(self.srv.q("SELECT count() FROM ins_zstd"), b"6000\n")

    def test_insert_chunked(self):
        self.create_m("ins_chunked")
        rows = make_rows(0, 20_000)
        raw = compress_blocks(rowbinary(rows), "lz4")

        def pieces(data, size=7777):  # chunk borders fall inside blocks and rows
            for i in range(0, len(data), size):
                yield data[i:i + size]

        r, data = self.srv.request(params={"query": "INSERT INTO ins_chunked FORMAT RowBinary", "decompress": "1"},
                                   body=pieces(raw), chunked=True)
        self.assertEqual(r.status, 200, data)
        r, data = self.srv.request(params={"query": "INSERT INTO ins_chunked FORMAT RowBinary"},
                                   body=pieces(rowbinary(make_rows(20_000, 5000)), 333), chunked=True)
        self.assertEqual(r.status, 200, data)
        self.assertEqual(self.select_all("ins_chunked")[2], make_rows(0, 25_000))

    def test_insert_text_formats_and_query_in_body(self):
        self.create_m("ins_text")
        self.srv.q("INSERT INTO ins_text VALUES ('2026-09-21 00:00:00.000', 'a', 1.5, 1)")
        r, data = self.srv.request(body=b"INSERT INTO ins_text FORMAT JSONEachRow\n"
                                        b'{"ts":"2026-09-21 00:00:01.000","host":"b","v":2.5,"n":2}\n')
        self.assertEqual(r.status, 200, data)
        r, data = self.srv.request(params={"query": "INSERT INTO ins_text FORMAT TSV"},
                                   body=b"2026-09-21 00:00:02.000\tc\t3.5\t3\n")
        self.assertEqual(r.status, 200, data)
        self.assertEqual(self.srv.q("SELECT host, v FROM ins_text ORDER BY n FORMAT JSONEachRow"),
                         b'{"host":"a","v":1.5}\n{"host":"b","v":2.5}\n{"host":"c","v":3.5}\n')

    def test_bad_insert_data_is_an_error_and_keeps_the_connection(self):
        self.create_m("ins_bad")
        c = self.srv.conn()
        r, data = self.srv.request(params={"query": "INSERT INTO ins_bad FORMAT RowBinary"},
                                   body=rowbinary(make_rows(0, 10)) + b"\x01\x02\x03", conn=c)
        self.assertNotEqual(r.status, 200)
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "33")
        self.assertIn(b"CANNOT_READ_ALL_DATA", data)
        r, data = self.srv.request(params={"query": "SELECT 1"}, conn=c)  # same keep-alive connection
        self.assertEqual((r.status, data), (200, b"1\n"))
        c.close()
        self.assertEqual(self.srv.q("SELECT count() FROM ins_bad"), b"0\n")

    def test_corrupted_block_is_rejected(self):
        self.create_m("ins_corrupt")
        body = bytearray(compress_blocks(rowbinary(make_rows(0, 100)), "lz4"))
        body[30] ^= 0xFF
        r, data = self.insert_rb("ins_corrupt", bytes(body), decompress="1")
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "40", data)

    # -- selects ------------------------------------------------------------------------------------

    def test_compressed_responses(self):
        plain = self.srv.q("SELECT number, toString(number) FROM numbers(300000)", default_format="RowBinary")
        r, data = self.srv.request(params={"query": "SELECT number, toString(number) FROM numbers(300000)",
                                           "default_format": "RowBinary", "compress": "1"})
        self.assertEqual(r.status, 200)
        self.assertLess(len(data), len(plain))
        self.assertEqual(decompress_blocks(data), plain)
        # HTTP compression as the clickhouse crate asks for it (Accept-Encoding: lz4)
        import lz4.frame
        r, data = self.srv.request(params={"query": "SELECT number, toString(number) FROM numbers(300000)",
                                           "default_format": "RowBinary"}, headers={"Accept-Encoding": "lz4"})
        self.assertEqual(r.getheader("Content-Encoding"), "lz4")
        self.assertEqual(lz4.frame.decompress(data), plain)
        r, data = self.srv.request(params={"query": "SELECT 1", "enable_http_compression": "0"},
                                   headers={"Accept-Encoding": "lz4"})
        self.assertIsNone(r.getheader("Content-Encoding"))
        self.assertEqual(data, b"1\n")

    def test_formats_and_headers(self):
        r, data = self.srv.request(params={"query": "SELECT 1 AS a, 'x' AS b", "query_id": "qid-1"})
        self.assertEqual(data, b"1\tx\n")
        self.assertEqual(r.getheader("X-ClickHouse-Format"), "TabSeparated")
        self.assertEqual(r.getheader("X-ClickHouse-Query-Id"), "qid-1")
        self.assertTrue(r.getheader("X-ClickHouse-Server-Display-Name"))
        summary = json.loads(r.getheader("X-ClickHouse-Summary"))
        self.assertEqual(summary["result_rows"], "1")
        r, data = self.srv.request(params={"query": "SELECT 1 AS a FORMAT JSONEachRow"})
        self.assertEqual((data, r.getheader("X-ClickHouse-Format")), (b'{"a":1}\n', "JSONEachRow"))
        self.assertEqual(self.srv.q("SELECT 1 AS a", default_format="RowBinaryWithNamesAndTypes"),
                         b"\x01\x01a\x05UInt8\x01")

    def test_query_in_url_and_body(self):
        r, data = self.srv.request(params={"query": "SELECT number"}, body=b"FROM numbers(3)")
        self.assertEqual(data, b"0\n1\n2\n")

    def test_server_side_params_multipart(self):
        boundary = "----b" + uuid.uuid4().hex
        fields = [("query", "SELECT {a:UInt32} + 1, {s:String}, {t:Identifier}"), ("param_a", "41"),
                  ("param_s", "it's a \\t tab"), ("param_t", "ignored")]
        body = b""
        for k, v in fields:
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        body += f"--{boundary}--\r\n".encode()
        r, data = self.srv.request(body=body, params={"default_format": "JSONCompactEachRow"},
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(r.status, 404, data)  # {t:Identifier} names a column that does not exist
        fields = fields[:3]
        fields[0] = ("query", "SELECT {a:UInt32} + 1, {s:String}")
        body = b""
        for k, v in fields:
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        body += f"--{boundary}--\r\n".encode()
        r, data = self.srv.request(body=body, params={"default_format": "JSONCompactEachRow"},
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(data, b'[42, "it\'s a \\t tab"]\n')
        # URL param_ works as well, and an injection attempt stays a value
        self.assertEqual(self.srv.q("SELECT {s:String}", param_s="x'); DROP TABLE t; --"),
                         b"x\\'); DROP TABLE t; --\n")

    def test_settings_and_database(self):
        self.assertEqual(self.srv.q("SELECT getSetting('max_threads'), currentDatabase()",
                                    max_threads="1", database="system"), b"1\tsystem\n")
        self.assertEqual(self.srv.q("SELECT getSetting('log_comment')", log_comment="a&b c"), b"a&b c\n")
        r, data = self.srv.request(params={"query": "SELECT 1", "no_such_setting": "1"})
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "115")
        r, data = self.srv.request(params={"query": "SELECT 1", "database": "nope"})
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "81", data)

    def test_readonly(self):
        c = self.srv.conn()
        c.request("GET", "/?" + urlencode({"query": "CREATE TABLE ro (a Int8) ENGINE = Memory"}))
        r = c.getresponse()
        self.assertEqual((r.status, r.getheader("X-ClickHouse-Exception-Code")), (403, "164"), r.read())
        c.close()
        r, data = self.srv.request(params={"query": "CREATE TABLE ro (a Int8) ENGINE = Memory", "readonly": "1"})
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "164")

    def test_sessions(self):
        sid = uuid.uuid4().hex
        self.srv.q("CREATE TEMPORARY TABLE tmp (a UInt8)", session_id=sid)
        self.srv.q("INSERT INTO tmp VALUES (7)", session_id=sid)
        self.srv.q("SET max_threads = 1", session_id=sid)
        self.assertEqual(self.srv.q("SELECT a, getSetting('max_threads') FROM tmp", session_id=sid), b"7\t1\n")
        r, data = self.srv.request(params={"query": "SELECT * FROM tmp"})
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "60")

    # -- errors ------------------------------------------------------------------------------------

    def test_errors(self):
        r, data = self.srv.request(params={"query": "SELECT * FROM no_such_table"})
        self.assertEqual(r.status, 404)
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "60")
        text = data.decode()
        self.assertTrue(text.startswith("Code: 60. DB::Exception: "), text)
        self.assertIn("(UNKNOWN_TABLE) (version 26.9", text)
        r, data = self.srv.request(params={"query": "SELEC 1"})
        self.assertEqual((r.status, r.getheader("X-ClickHouse-Exception-Code")), (400, "62"))
        r, data = self.srv.request(params={"query": "SELECT throwIf(1, 'boom')"})
        self.assertEqual((r.status, r.getheader("X-ClickHouse-Exception-Code")), (500, "395"))
        self.assertIn(b"boom", data)
        r, data = self.srv.request(params={"query": "INSERT INTO no_such_table FORMAT RowBinary"}, body=b"\x00" * 64)
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "60")
        r, data = self.srv.request(params={})
        self.assertEqual(r.getheader("X-ClickHouse-Exception-Code"), "62")

    # -- system tables, ALTER, restart ------------------------------------------------------------

    def test_system_parts_and_modify_ttl(self):
        self.create_m("sysparts")
        for i in range(3):
            r, data = self.insert_rb("sysparts", rowbinary(make_rows(i * 100, 100)))
            self.assertEqual(r.status, 200, data)
        parts = self.srv.q("SELECT count(), sum(rows) FROM system.parts "
                           "WHERE active AND database = currentDatabase() AND table = 'sysparts'")
        self.assertEqual(parts, b"3\t300\n")
        self.srv.q("ALTER TABLE sysparts MODIFY TTL toDateTime(ts) + INTERVAL 5000 DAY")
        engine = self.srv.q("SELECT engine_full FROM system.tables WHERE name = 'sysparts'").decode()
        self.assertIn("toIntervalDay(5000)", engine)
        self.srv.q("OPTIMIZE TABLE sysparts FINAL")
        self.assertEqual(self.srv.q("SELECT count(), sum(rows) FROM system.parts "
                                    "WHERE active AND table = 'sysparts'"), b"1\t300\n")

    def test_system_tables(self):
        for table in ("metrics", "events", "asynchronous_metrics", "disks", "replicas", "mutations", "errors",
                      "processes", "merges", "tables", "columns", "settings", "clusters"):
            with self.subTest(table=table):
                self.srv.q(f"SELECT * FROM system.{table} LIMIT 1 FORMAT Null")
        am = dict(line.split("\t") for line in self.srv.q(
            "SELECT metric, value FROM system.asynchronous_metrics").decode().splitlines())
        self.assertGreater(float(am["MemoryResident"]), 50e6)
        self.assertGreater(float(am["Uptime"]), 0)
        self.assertIn("TotalRowsOfMergeTreeTables", am)
        self.srv.q("SELECT 'logged' FORMAT Null")
        self.srv.q("SYSTEM FLUSH LOGS")
        for table in ("query_log", "part_log"):
            with self.subTest(table=table):
                self.assertNotEqual(self.srv.q(f"SELECT count() FROM system.{table}"), b"0\n")

    def test_restart_keeps_data(self):
        with tempfile.TemporaryDirectory(prefix="chdb-front-restart-") as tmp:
            data_dir = os.path.join(tmp, "data")
            srv = Srv(data_dir)
            srv.q("CREATE TABLE keep (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
            srv.q("INSERT INTO keep SELECT number, toString(number) FROM numbers(1234)")
            self.assertEqual(srv.stop(), 0)
            srv = Srv(data_dir)
            try:
                self.assertEqual(srv.q("SELECT count(), sum(n) FROM keep"), b"1234\t760761\n")
            finally:
                self.assertEqual(srv.stop(signal.SIGINT), 0)


if __name__ == "__main__":
    unittest.main()
