"""
A trained model as a file whose evaluation runs none of the code that trained it. READ-ONLY for proposers.

save(model, example, path): records the ATen operations one forward pass of `model` on `example` runs
(torch.fx's make_fx on real tensors: the kernels eager mode runs, in the same order, so the numbers are
the same) and writes them with the weights to `path`: 8 bytes (little-endian) giving the length of a
JSON header (the graph, and each tensor's dtype, shape and place), then the tensors' raw bytes. No pickle.

load(path, device) -> Graph reads such a file without running anything from it. Whoever wrote the file
(the candidate's process, or anyone with write access to the run dir) is not trusted, so it is checked
against a closed grammar first: every operation is an ATen operator (torch.ops.aten.*) or tuple
indexing; none that reads or writes files or prints; a string argument only where an operator expects
a mode ("tanh", "floor", ...); in-place operations only on the graph's own intermediate values (never on
a weight or the input, or a view of one: a model cannot keep state from one call to the next); one
tensor out. A rejected file raises ModelFileError saying why. Graph(x) runs the operations in order, on
fresh copies of the weights and of x.

What this does not stop: any function of the input the listed operators can compute (looking ahead,
for one: the evaluation's causality probe is there for that).
"""
import json
import math
import os
import re
import stat
import time

import torch

MAGIC = "ar-ray-aten-graph"
VERSION = 1
MAX_HEADER_BYTES = 64 * 2**20
MAX_NODES = 200_000
DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")}
LAYOUTS = {"strided": torch.strided}
MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format,
                  "channels_last": torch.channels_last}
# Operators that touch the world outside their tensors: never in a model file (each also has a `str` argument
# no mode list allows; named here so the error says plainly what was found).
DENIED = frozenset({"from_file", "save", "load", "_print", "warn", "_debug_has_internal_overlap"})
# The only argument names a string may be given to: an operator's mode.
STRING_ARGS = frozenset({"approximate", "rounding_mode", "reduce", "reduction", "padding_mode", "mode",
                         "interpolation", "indexing", "side", "pad_mode", "padding", "equation", "compute_mode"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ModelFileError(ValueError):
    """The file is not a model this reader accepts; the message says what is wrong."""


# ---------------------------------------------------------------------------
# Writing (runs in the training process).

def _encode(value, names):
    if isinstance(value, torch.fx.Node):
        return {"ref": names[value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, names) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ModelFileError(f"cannot save an argument of type {type(value).__name__}: {value!r}")


@torch.no_grad()
def save(model, example, path, autocast_dtype=None):
    """Record one forward pass of `model` on `example` (int64 tokens, shape (B, T)) and write it to `path`.
    `autocast_dtype`: the pass runs under CUDA autocast to that dtype, so the casts it makes are recorded
    (the reader then runs the graph as it is). Returns (number of operations, bytes written)."""
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    weights = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    was_training = model.training
    model.eval()
    try:
        with torch.autocast("cuda", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            gm = make_fx(lambda w, x: functional_call(model, w, (x,)))(weights, example)
    finally:
        model.train(was_training)
    leaves = list(weights.items())  # make_fx flattens (weights, x): the dict's values in order, then x
    tensors, nodes, names, out = {}, [], {}, None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(leaves) + 1:
        raise ModelFileError(f"expected {len(leaves) + 1} graph inputs, found {len(placeholders)}")
    for node, (key, tensor) in zip(placeholders, leaves):
        names[node] = f"w:{key}"
        tensors[names[node]] = tensor
    names[placeholders[-1]] = "input"
    for node in gm.graph.nodes:
        if node.op == "get_attr":  # a tensor the forward made (torch.tensor(...), a constant)
            names[node] = f"c:{node.target}"
            tensors[names[node]] = getattr(gm, node.target)
        elif node.op == "call_function":
            names[node] = f"n{len(nodes)}"
            if isinstance(node.target, torch._ops.OpOverload):
                op = str(node.target)  # aten.<name>.<overload>
            elif getattr(node.target, "__name__", "") == "getitem":
                op = "getitem"
            else:
                raise ModelFileError(f"the forward calls {node.target!r}, which is not an ATen operator")
            nodes.append({"name": names[node], "op": op, "args": _encode(node.args, names),
                          "kwargs": {k: _encode(v, names) for k, v in node.kwargs.items()}})
        elif node.op == "output":
            out = node.args[0]
            if isinstance(out, (list, tuple)) and len(out) == 1:
                out = out[0]
    if not isinstance(out, torch.fx.Node):
        raise ModelFileError("the forward must return one tensor (the logits)")
    return _write(path, nodes, names[out], tensors)


def _write(path, nodes, output, tensors):
    table, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise ModelFileError(f"tensor {name} has dtype {dtype}, not one of {sorted(DTYPES)}")
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        table[name] = {"dtype": dtype, "shape": list(t.shape), "offset": offset, "nbytes": len(raw)}
        blobs.append(raw)
        offset += len(raw)
    header = json.dumps({"format": MAGIC, "version": VERSION, "nodes": nodes, "output": output,
                         "tensors": table}).encode()
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)
    return len(nodes), 8 + len(header) + offset


# ---------------------------------------------------------------------------
# Reading (runs in the trusted evaluation).

def _read(path):
    """(header dict, the tensor bytes) of the file at `path`, which must be a regular file (no link, no FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ModelFileError(f"cannot open {path}: {e.strerror} (a link or special file is not accepted)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ModelFileError(f"{path} is not a regular file")
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= MAX_HEADER_BYTES:
            raise ModelFileError(f"{path}: header length {n} is not a model file's (at most {MAX_HEADER_BYTES})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:
            raise ModelFileError(f"{path}: the header is not JSON ({e})") from None
        data = bytearray(f.read())
    if not isinstance(header, dict) or header.get("format") != MAGIC or header.get("version") != VERSION:
        raise ModelFileError(f"{path} is not an {MAGIC} file of version {VERSION}")
    return header, data


def _resolve(op):
    """The operator a node names: torch.ops.aten.<name>.<overload>, or 'getitem'."""
    if op == "getitem":
        return "getitem"
    parts = op.split(".") if isinstance(op, str) else []
    if len(parts) != 3 or parts[0] != "aten" or not all(_NAME.fullmatch(p) for p in parts[1:]):
        raise ModelFileError(f"operation {op!r} is not an ATen operator (aten.<name>.<overload>)")
    if parts[1] in DENIED or "rng" in parts[1] or "seed" in parts[1]:
        raise ModelFileError(f"operation {op} is not allowed in a model file (it reaches outside its tensors)")
    try:
        fn = getattr(getattr(torch.ops.aten, parts[1]), parts[2])
    except (AttributeError, RuntimeError):
        raise ModelFileError(f"operation {op} does not exist in this PyTorch") from None
    if not isinstance(fn, torch._ops.OpOverload):
        raise ModelFileError(f"operation {op} is not an ATen operator overload")
    return fn


class Graph:
    """A checked model file, ready to run: Graph(x) -> the logits."""

    def __init__(self, nodes, output, weights, device):
        self.nodes, self.output, self.weights, self.device = nodes, output, weights, torch.device(device)

    def _decode(self, value, env):
        if isinstance(value, list):
            return [self._decode(v, env) for v in value]
        if isinstance(value, dict):
            (kind, v), = value.items()
            if kind == "ref":
                return env[v]
            if kind == "dtype":
                return DTYPES[v]
            if kind == "device":
                return self.device  # the graph runs where the evaluation runs
            if kind == "layout":
                return LAYOUTS[v]
            return MEMORY_FORMATS[v]
        return value

    def __call__(self, x):
        # Fresh copies of the weights and the input on every call: the schema check above refuses in-place writes
        # to them, but an operator that aliases without saying so (aten._unsafe_view, set_) could slip one past it;
        # a write to a copy can neither keep state for the next call nor reach the caller's tensors (the
        # evaluation's targets share storage with its inputs).
        env = {k: v.clone() for k, v in self.weights.items()}
        env["input"] = x.clone()
        for name, fn, args, kwargs in self.nodes:
            args, kwargs = self._decode(args, env), {k: self._decode(v, env) for k, v in kwargs.items()}
            env[name] = args[0][args[1]] if fn == "getitem" else fn(*args, **kwargs)
        return env[self.output]


def _check_value(value, where, known, depth=0):
    """A value in a node's arguments: JSON scalars, lists, refs to earlier values, dtype/device/layout/format."""
    if depth > 8:
        raise ModelFileError(f"{where}: arguments nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for v in value:
            _check_value(v, where, known, depth + 1)
        return
    if isinstance(value, dict) and len(value) == 1:
        (kind, v), = value.items()
        tables = {"dtype": DTYPES, "layout": LAYOUTS, "memory_format": MEMORY_FORMATS}
        if kind == "ref" and v in known:
            return
        if kind == "ref":
            raise ModelFileError(f"{where}: refers to {v!r}, which is not an earlier value of the graph")
        if kind in tables and v in tables[kind]:
            return
        if kind == "device" and v in ("cpu", "cuda"):
            return
    raise ModelFileError(f"{where}: argument {value!r} is not one a model file may hold")


def _refs(value):
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict) and set(value) == {"ref"}:
        return [value["ref"]]
    return []


def _strings(value):
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _check_node(i, node, fn, known, tainted):
    """Check one node's arguments against its operator's schema; returns the names its output aliases."""
    where = f"operation {i} ({node.get('op')})"
    args, kwargs = node.get("args"), node.get("kwargs")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ModelFileError(f"{where}: args must be a list and kwargs an object")
    for v in [*args, *kwargs.values()]:
        _check_value(v, where, known)
    if fn == "getitem":
        if len(args) != 2 or not (isinstance(args[0], dict) and "ref" in args[0]) or type(args[1]) is not int or kwargs:
            raise ModelFileError(f"{where}: getitem takes a value and an index")
        return set(_refs(args[0])) & tainted
    schema = fn._schema
    params = list(schema.arguments)
    if len(args) > len(params) or any(k not in {p.name for p in params} for k in kwargs):
        raise ModelFileError(f"{where}: arguments do not match {schema}")
    given = list(zip(params, args)) + [(next(p for p in params if p.name == k), v) for k, v in kwargs.items()]
    aliased = set()
    for param, value in given:
        if _strings(value) and param.name not in STRING_ARGS:
            raise ModelFileError(f"{where}: a string is given to argument {param.name!r}, which takes no mode")
        info = param.alias_info
        if info is not None and info.is_write and set(_refs(value)) & tainted:
            raise ModelFileError(f"{where}: writes in place into a weight or the input (argument {param.name!r}): "
                                 "a model may not keep state between calls")
        if info is not None:
            aliased |= set(_refs(value))
    returns_alias = any(r.alias_info is not None for r in schema.returns)
    return (aliased & tainted) if returns_alias else set()


def load(path, device="cpu"):
    """The checked Graph of the model file at `path`, its weights on `device` (see the module's docstring)."""
    header, data = _read(path)
    nodes, output, table = header.get("nodes"), header.get("output"), header.get("tensors")
    if not isinstance(nodes, list) or not isinstance(table, dict) or not isinstance(output, str):
        raise ModelFileError(f"{path}: nodes, output and tensors are missing or malformed")
    if len(nodes) > MAX_NODES:
        raise ModelFileError(f"{path}: {len(nodes)} operations, more than {MAX_NODES}")
    weights = {}
    for name, meta in table.items():
        if not (isinstance(name, str) and name.startswith(("w:", "c:")) and isinstance(meta, dict)):
            raise ModelFileError(f"{path}: tensor entry {name!r} is malformed")
        dtype, shape, offset, nbytes = (meta.get(k) for k in ("dtype", "shape", "offset", "nbytes"))
        if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape) \
                or not all(isinstance(v, int) and v >= 0 for v in (offset, nbytes)) or offset + nbytes > len(data):
            raise ModelFileError(f"{path}: tensor {name} has a malformed dtype, shape or place")
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        if math.prod(shape) * itemsize != nbytes:
            raise ModelFileError(f"{path}: tensor {name} holds {nbytes} bytes, not what shape {shape} needs")
        flat = torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=offset) if nbytes else \
            torch.empty(0, dtype=torch.uint8)
        weights[name] = flat.view(DTYPES[dtype]).reshape(shape).to(device)
    known, tainted, ops = set(weights) | {"input"}, set(weights) | {"input"}, []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) or node["name"] in known:
            raise ModelFileError(f"{path}: operation {i} has no name or reuses one")
        fn = _resolve(node.get("op"))
        if _check_node(i, node, fn, known, tainted):
            tainted.add(node["name"])  # a view of a weight or of the input: never written in place
        known.add(node["name"])
        ops.append((node["name"], fn, node["args"], node["kwargs"]))
    if output not in known or output in weights:
        raise ModelFileError(f"{path}: the output {output!r} is not a value the graph computes")
    return Graph(ops, output, weights, device)


if __name__ == "__main__":  # python modelfile.py FILE: check a model file and say what it holds
    import sys
    t0 = time.time()
    g = load(sys.argv[1])
    print(f"{sys.argv[1]}: {len(g.nodes)} operations, {len(g.weights)} tensors, checked in {time.time() - t0:.2f}s")
