"""The weight store: weights read with explicit reads into a bounded pool, not mapped.

WeightStore(edge, plan, K) serves an Interpreter (Interpreter(..., store=...)) with:

- resident tensors, read once at load into anonymous memory;
- streamed tensors, cut at row boundaries into *units* (consecutive pieces of the program's
  weight stream, each at most plan.slot_bytes) that cycle through plan.slots buffers: unit u
  always lands in slot u mod W, so every op is bound once to fixed views. Before the first op
  that needs unit u, the step waits for it (acquire); after the last, it hands the slot to
  unit u + W (release), which a background thread reads while later ops compute. The number
  of units is a multiple of W, so the cycle continues into the next step unchanged;
- embedding lookups, which read only the rows of the step's tokens.

Every read goes through os.preadv into the destination buffer and is followed by
posix_fadvise(DONTNEED) on the range, so the page cache does not keep what was read: the
budget is what the process holds, and reads come from storage each time. bytes_read counts
them. Where posix_fadvise is missing (macOS, the browser), reads still work.
"""
from __future__ import annotations

import os
import queue
import threading

import numpy as np

from .errors import EdgeError
from .format import FLOAT_DTYPES, align, tensor_parts
from .interpreter import Weights, act_scratch

READ_CHUNK = 32 << 20  # bytes per preadv call
READERS = 2  # reader threads: two requests in flight read small parts (scales) about 2x faster
RUN_READERS = 8  # threads for scattered neuron reads (random 16-64 KB reads: 1 -> 16 threads ~2x here)
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


class _Piece:
    """Rows r0:r1 of a tensor inside a unit: its part views (set when the slot exists)."""

    __slots__ = ("name", "r0", "r1", "unit", "views")

    def __init__(self, name, r0, r1):
        self.name, self.r0, self.r1 = name, r0, r1
        self.unit, self.views = -1, None


class WeightStore:
    def __init__(self, edge, plan, prefetch: bool = True):
        """prefetch=False: no reader threads; each unit is read when acquired (the naive
        loader the benchmark compares with)."""
        self.edge, self.plan, self.prefetch = edge, plan, prefetch
        self.fd = os.open(edge.path, os.O_RDONLY)
        self.bytes_read = 0
        self._lock = threading.Lock()
        tensors = edge.header["tensors"]
        self.resident = {name: self._read_tensor(name) for name in plan.resident}
        self.pieces: dict = {}      # tensor name -> [_Piece] in row order
        self.units: list = []       # unit -> [_Piece]
        if plan.stream:
            self._cut_units(tensors)
        W = plan.slots
        self.pool = [np.empty(plan.slot_bytes, np.uint8) for _ in range(W)] if self.units else []
        self._reads = [self._lay_out(pieces, self.pool[u % W], tensors) for u, pieces in enumerate(self.units)]
        self._ready = [threading.Event() for _ in self.units]
        self._jobs: queue.Queue = queue.Queue()
        self._error = None
        self._threads = []
        self._run_pool = None
        self._neuron_caches: dict = {}
        if self.units and prefetch:
            self._threads = [threading.Thread(target=self._reader, name="edgert-weight-reader", daemon=True)
                             for _ in range(READERS)]
            for t in self._threads:
                t.start()
            for u in range(W):
                self._jobs.put(u)

    # --- reading ---------------------------------------------------------------------------

    def read_into(self, buf, offset: int) -> None:
        """Fill the writable buffer `buf` from file offset `offset`, then drop those pages from
        the page cache."""
        mv = memoryview(buf).cast("B")
        done, n = 0, len(mv)
        while done < n:
            got = os.preadv(self.fd, [mv[done:done + READ_CHUNK]], offset + done)
            if got <= 0:
                raise EdgeError(f"{self.edge.path}: unexpected end of file while reading weights")
            done += got
        if _DONTNEED is not None and n:
            os.posix_fadvise(self.fd, offset, n, _DONTNEED)
        with self._lock:
            self.bytes_read += n

    def _read_tensor(self, name: str):
        """A tensor copied into anonymous memory: ndarray, or quantized (fmt, d, m, qs) as Weights.get gives."""
        t = self.edge.header["tensors"][name]
        base = self.edge.data_start + t["offset"]
        parts = {}
        for part, dt, shape, off in tensor_parts(t["dtype"], t["shape"]):
            arr = np.empty(shape, dt)
            self.read_into(arr, base + off)
            parts[part] = arr
        return _as_weight(t["dtype"], parts)

    def _reader(self):
        while True:
            u = self._jobs.get()
            if u is None:
                return
            try:
                self._read_unit(u)
            except BaseException as e:  # noqa: BLE001 -- handed to the compute thread in acquire()
                self._error = e
            self._ready[u].set()

    def _read_unit(self, u: int) -> None:
        for file_off, view in self._reads[u]:
            self.read_into(view, file_off)

    # --- the unit cycle --------------------------------------------------------------------

    def acquire(self, u: int) -> None:
        """Wait until unit u is in its slot (without prefetching: read it now)."""
        if not self.prefetch:
            self._read_unit(u)
            return
        self._ready[u].wait()
        if self._error is not None:
            err, self._error = self._error, None
            raise EdgeError(f"reading weights from {self.edge.path} failed: {err}") from err

    def release(self, u: int) -> None:
        """Unit u is no longer needed this step: its slot takes unit u + W."""
        if not self.prefetch:
            return
        self._ready[u].clear()
        nxt = (u + self.plan.slots) % len(self.units)
        self._jobs.put(nxt)

    def close(self) -> None:
        if self._run_pool is not None:
            self._run_pool.shutdown()
            self._run_pool = None
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        self._threads = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def read_runs(self, runs) -> None:
        """Scattered reads: runs [(file offset, [writable buffers filled in order])], several
        in flight at once (small random reads need depth to approach the storage's speed)."""
        if len(runs) <= 2:
            for off, bufs in runs:
                self._read_scatter(bufs, off)
            return
        if self._run_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._run_pool = ThreadPoolExecutor(RUN_READERS, thread_name_prefix="edgert-neuron-reader")
        for f in [self._run_pool.submit(self._read_scatter, bufs, off) for off, bufs in runs]:
            f.result()

    def _read_scatter(self, bufs, offset: int) -> None:
        for i in range(0, len(bufs), 512):  # IOV_MAX is 1024 on Linux
            views = [memoryview(b).cast("B") for b in bufs[i:i + 512]]
            n = sum(len(v) for v in views)
            if os.preadv(self.fd, views, offset) != n:  # a regular file reads in full unless truncated
                raise EdgeError(f"{self.edge.path}: short read of neuron records")
            if _DONTNEED is not None:
                os.posix_fadvise(self.fd, offset, n, _DONTNEED)
            with self._lock:
                self.bytes_read += n
            offset += n

    def neuron_cache(self, name: str, up_dtype: str, d: int):
        """The NeuronCache of a sparse layer's bundle (None when the plan keeps it resident)."""
        layer = name.split(".")[1]
        cap = self.plan.neuron_cache.get(layer)
        if cap is None:
            return None
        if name not in self._neuron_caches:
            from .sparse_ffn import NeuronCache

            self._neuron_caches[name] = NeuronCache(self, name, up_dtype, d, cap)
        return self._neuron_caches[name]

    # --- layout ----------------------------------------------------------------------------

    def _cut_units(self, tensors) -> None:
        """Cut the streamed tensors, in order, into units of at most slot_bytes (rows kept
        whole, each part 64-aligned in the slot); then split units until their number is a
        multiple of the slot count."""
        cap, units, cur, used = self.plan.slot_bytes, [], [], 0
        for name in self.plan.stream:
            t = tensors[name]
            parts = tensor_parts(t["dtype"], t["shape"])
            rowb = [dt.itemsize * int(np.prod(shape[1:])) for _, dt, shape, _ in parts]
            n, r = int(t["shape"][0]), 0
            while r < n:
                free = cap - used - 64 * len(parts)
                rows = min(n - r, max(0, free) // sum(rowb))
                if rows == 0:
                    if not cur:
                        raise EdgeError(f"slot of {cap} bytes cannot hold one row of {name}")
                    units.append(cur)
                    cur, used = [], 0
                    continue
                cur.append(_Piece(name, r, r + rows))
                used += sum(align(rows * b) for b in rowb)
                r += rows
            self.pieces[name] = []
        if cur:
            units.append(cur)
        W = self.plan.slots
        while len(units) % W or len(units) < W:
            i = max(range(len(units)), key=lambda i: self._unit_bytes(units[i], tensors))
            units[i:i + 1] = _split(units[i])
        self.units = units
        for u, unit in enumerate(units):
            for p in unit:
                p.unit = u
                self.pieces[p.name].append(p)

    def _unit_bytes(self, unit, tensors) -> int:
        return sum(row_parts_bytes(tensors[p.name]) * (p.r1 - p.r0) for p in unit)

    def _lay_out(self, pieces, slot, tensors) -> list:
        """Give each piece its views into `slot`; returns the unit's reads [(file offset, slot
        view)], runs that are contiguous both in the file and in the slot merged into one (a
        whole tensor's parts lie in the slot as in the file, so it is one read)."""
        off, runs = 0, []  # runs: [file offset, slot offset, bytes]
        for p in pieces:
            t = tensors[p.name]
            base = self.edge.data_start + t["offset"]
            parts = {}
            for part, dt, shape, poff in tensor_parts(t["dtype"], t["shape"]):
                rb = dt.itemsize * int(np.prod(shape[1:]))
                nbytes = (p.r1 - p.r0) * rb
                parts[part] = slot[off:off + nbytes].view(dt).reshape((p.r1 - p.r0,) + tuple(shape[1:]))
                f = base + poff + p.r0 * rb
                if runs and 0 <= f - (runs[-1][0] + runs[-1][2]) == off - (runs[-1][1] + runs[-1][2]) < 64:
                    runs[-1][2] = off + nbytes - runs[-1][1]
                else:
                    runs.append([f, off, nbytes])
                off = align(off + nbytes)
            if off > len(slot):
                raise AssertionError("unit larger than its slot")
            p.views = _as_weight(t["dtype"], parts)
        return [(f, slot[o:o + n]) for f, o, n in runs]

    # --- the interpreter's view ------------------------------------------------------------

    def weights(self, edge, K, expand):
        """The Weights object an Interpreter uses with this store."""
        if expand:
            raise EdgeError("a memory budget keeps weights as stored: weight expansion (f32/int8) is not supported with it")
        return _StoreWeights(self, edge, K)

    def bind(self, it, op: dict, st, default):
        """The op's callable: as the interpreter binds it, with the reads its weights need
        around it (or, for streamed linears and embedding lookups, the store's own)."""
        units = self._op_units(it.program)
        i = self._op_index[id(op)]
        if op["op"] == "embed" and op["w"]["weight"] not in self.resident:
            call = self._bind_embed_rows(it, op, st)
        elif op["op"] == "linear" and op["w"]["weight"] in self.pieces:
            return self._bind_streamed_linear(it, op, st)
        else:
            call = default(it, op, st)
        acquire, release = units[i]
        if not acquire and not release:
            return call

        def run():
            for u in acquire:
                self.acquire(u)
            call()
            for u in release:
                self.release(u)
        return run

    def _op_units(self, program):
        """Per op index: (units to acquire before it, units to release after it)."""
        if getattr(self, "_units_of_op", None) is None:
            self._op_index = {id(op): i for i, op in enumerate(program["ops"])}
            first, last = {}, {}
            for i, op in enumerate(program["ops"]):
                if op["op"] == "linear":
                    continue  # streamed linears acquire and release per piece themselves
                for name in op["w"].values():
                    if op["op"] == "embed" and name not in self.resident:
                        continue
                    for p in self.pieces.get(name, ()):
                        first.setdefault(p.unit, i)
                        last[p.unit] = i
            seen = dict(first)
            for i, op in enumerate(program["ops"]):
                if op["op"] == "linear":
                    for p in self.pieces.get(op["w"]["weight"], ()):
                        seen[p.unit] = min(seen.get(p.unit, i), i)
            if [seen[u] for u in sorted(seen)] != sorted(seen.values()):
                raise EdgeError("the weight stream is not in the order the program reads it")
            ops = [([], []) for _ in program["ops"]]
            for u, i in first.items():
                ops[i][0].append(u)
            for u, i in last.items():
                ops[i][1].append(u)
            self._units_of_op = ops
        return self._units_of_op

    def _piece_steps(self, name: str):
        """(piece, acquire?, release?) for the pieces of a streamed linear weight, in order: a
        unit is acquired at its first piece in the whole stream and released at its last."""
        firsts, lasts = {}, {}
        for unit in self.units:
            firsts[id(unit[0])] = True
            lasts[id(unit[-1])] = True
        return [(p, id(p) in firsts, id(p) in lasts) for p in self.pieces[name]]

    def _bind_streamed_linear(self, it, op, st):
        """out [rows, N] = x @ W.T (+ bias) with W's rows in pieces across units: the activation
        is quantized once (shared scratch as in the interpreter's linear), then one product per
        piece, each waiting for its unit and freeing it after its last piece."""
        K = it.K
        name = op["w"]["weight"]
        bias = it.weights.get(op["w"]["bias"]) if "bias" in op["w"] else None
        src = op["in"][0]
        x, out = st.env[src], st.env[op["out"][0]]
        rows = x.shape[0]
        steps = self._piece_steps(name)
        quantized = isinstance(steps[0][0].views, tuple)
        xq, xd, xs, fresh = act_scratch(st, src, x) if quantized else (None, None, None, False)
        tmp = None
        if rows > 1:  # products land in one scratch per step (a piece's columns of out are strided)
            widest = max(p.r1 - p.r0 for pieces in self.pieces.values() for p in pieces)
            if getattr(st, "stream_tmp", None) is None:
                st.stream_tmp = np.empty(rows * widest, np.float32)
            tmp = st.stream_tmp
        jobs = []
        for p, acq, rel in steps:
            dst = out[:, p.r0:p.r1] if rows == 1 else tmp[:rows * (p.r1 - p.r0)].reshape(rows, p.r1 - p.r0)
            jobs.append((p.unit, acq, rel, p.views, dst, None if rows == 1 else out[:, p.r0:p.r1]))

        def run():
            if quantized and fresh:
                K.quantize_act(x, xq, xd, xs)
            for u, acq, rel, w, dst, final in jobs:
                if acq:
                    self.acquire(u)
                if quantized:
                    K.qmatmul(w[0], xq, xd, xs, w[1], w[2], w[3], dst)
                else:
                    np.matmul(x, w.T, out=dst)
                if rel:
                    self.release(u)
                if final is not None:
                    np.copyto(final, dst)
            if bias is not None:
                np.add(out, bias, out=out)
        return run

    def _bind_embed_rows(self, it, op, st):
        """Embedding lookup reading only the step's token rows from storage."""
        name = op["w"]["weight"]
        t = self.edge.header["tensors"][name]
        tokens, out = st.env[op["in"][0]], st.env[op["out"][0]]
        n = tokens.shape[0]
        base = self.edge.data_start + t["offset"]
        parts, rowb = {}, {}
        for part, dt, shape, poff in tensor_parts(t["dtype"], t["shape"]):
            parts[part] = (np.empty((n,) + tuple(shape[1:]), dt), base + poff)
            rowb[part] = dt.itemsize * int(np.prod(shape[1:]))
        vocab = int(t["shape"][0])
        if t["dtype"] in FLOAT_DTYPES:
            buf = parts["data"][0]

            def run():
                self._read_rows(tokens, vocab, parts, rowb)
                np.copyto(out, buf, casting="unsafe")
            return run
        w = _as_weight(t["dtype"], {p: a for p, (a, _) in parts.items()})
        idx = np.arange(n, dtype=np.int64)
        K = it.K

        def run():
            self._read_rows(tokens, vocab, parts, rowb)
            K.dequant_rows(w[0], w[1], w[2], w[3], idx, out)
        return run

    def _read_rows(self, tokens, vocab, parts, rowb):
        for j, tok in enumerate(tokens.tolist()):
            if not 0 <= tok < vocab:
                raise EdgeError(f"token id {tok} outside the vocabulary [0, {vocab})")
            for part, (arr, off) in parts.items():
                self.read_into(arr[j], off + tok * rowb[part])


def row_parts_bytes(t: dict) -> int:
    return sum(dt.itemsize * int(np.prod(shape[1:])) for _, dt, shape, _ in tensor_parts(t["dtype"], t["shape"]))


def _split(unit: list) -> list:
    """One unit -> two: at a piece boundary, or a single piece at its middle row."""
    if len(unit) > 1:
        h = len(unit) // 2
        return [unit[:h], unit[h:]]
    p = unit[0]
    if p.r1 - p.r0 < 2:
        raise EdgeError("cannot split the weight stream finely enough for the slot count")
    mid = (p.r0 + p.r1) // 2
    return [[_Piece(p.name, p.r0, mid)], [_Piece(p.name, mid, p.r1)]]


def _as_weight(dtype: str, parts: dict):
    """Parts dict -> what Weights.get returns: float32 array, or (fmt, d bits, m bits, qs)."""
    if dtype in FLOAT_DTYPES:
        return parts["data"] if parts["data"].dtype == np.float32 else parts["data"].astype(np.float32)
    from .kernels import formats

    empty = np.zeros((0, 0), np.uint16)
    m = parts["m"].view(np.uint16) if "m" in parts else empty
    return (formats.FORMATS[dtype], parts["d"].view(np.uint16), m, parts["qs"])


class _StoreWeights(Weights):
    """Weights.get answered from the store: resident copies, or a streamed tensor's single
    piece (its slot views). Streamed linears and embeddings never ask (the store binds them)."""

    def __init__(self, store, edge, K):
        super().__init__(edge, K, None)
        self.store = store

    def get(self, name: str):
        if name in self.store.resident:
            return self.store.resident[name]
        pieces = self.store.pieces.get(name)
        if pieces and len(pieces) == 1:
            return pieces[0].views
        raise EdgeError(f"weight {name!r} is neither resident nor streamed whole under this memory plan")
