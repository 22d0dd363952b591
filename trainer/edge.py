"""Edge export: what a firmware engineer needs to run the int8 model under TensorFlow Lite Micro.

The ops to register (`MicroMutableOpResolver` calls) and the tensor arena that works, measured
with the TFLite Micro interpreter itself (the `tflite-micro` package), for the manifest and as
constants in `model_data.h`. No TensorFlow: `ai_edge_litert` reads the model's operators and
`tflite_micro` allocates it, both imported only when needed.

A too-small arena can crash the interpreter (a segfault inside `tflite_micro`), so every
allocation is tried in a fresh Python process, and its exit code says whether it worked.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The alignment TFLite Micro gives every buffer in the arena: sizes are searched in these steps.
ARENA_STEP = 16
# The smallest arena is measured on this machine (64-bit pointers, TFLite Micro's reference
# kernels, one TFLite Micro version). A microcontroller build differs: optimised kernels
# (CMSIS-NN, ESP-NN, ...) ask for scratch buffers the reference kernels do not, other TFLite
# Micro versions plan and book-keep differently. 32-bit pointers make its own structures
# smaller, which only helps. And an arena just short of the smallest can crash AllocateTensors()
# rather than fail it (seen in TFLite Micro's C++, 16 bytes short). So the recommended size adds
# a quarter, rounded up to whole KiB.
ARENA_HEADROOM = 0.25
ARENA_ROUND = 1024
PROBE_TIMEOUT_S = 60

# Builtin op -> the TFLite Micro `MicroMutableOpResolver` method that registers it, for every
# builtin that class can register (tensorflow/lite/micro/micro_mutable_op_resolver.h, 2026-08).
RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "ASSIGN_VARIABLE": "AddAssignVariable",
    "AVERAGE_POOL_2D": "AddAveragePool2D", "BATCH_MATMUL": "AddBatchMatMul",
    "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "BROADCAST_ARGS": "AddBroadcastArgs",
    "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce", "CAST": "AddCast",
    "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MUL": "AddMul",
    "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad",
    "PADV2": "AddPadV2", "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize",
    "READ_VARIABLE": "AddReadVariable", "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu",
    "RELU6": "AddRelu6", "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax",
    "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "SPACE_TO_DEPTH": "AddSpaceToDepth",
    "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv", "TRANSPOSE": "AddTranspose",
    "UNPACK": "AddUnpack", "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

# One allocation, in a process of its own: exit 0 if the model allocates in `size` bytes and
# runs once on a blank input, 3 if TFLite Micro refuses (a RuntimeError); a crash is a signal.
# With a third argument it prints the RecordingMicroAllocator's figures to stderr.
PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
model = open(sys.argv[1], "rb").read()
try:
    interpreter = runtime.Interpreter.from_bytes(model, arena_size=int(sys.argv[2]))
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
    interpreter.invoke()
except RuntimeError as err:
    print(err, file=sys.stderr)
    sys.exit(3)
if len(sys.argv) > 3:
    interpreter.print_allocations()
"""
PROBE_REFUSED = 3
REPORTED_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


class EdgeError(RuntimeError):
    """The model cannot be prepared for TensorFlow Lite Micro; the message says why."""


def model_ops(model: bytes) -> list[str]:
    """The `MicroMutableOpResolver` methods (`AddFullyConnected`, ...) that register the builtin
    ops the model uses, one per op, in the order the graph first uses them. An op TFLite Micro
    cannot register, or a custom op, is an `EdgeError` naming it."""
    methods = []
    for op in op_names(model):
        if op not in RESOLVER_METHODS:
            raise EdgeError(f"the model uses {op}, which TensorFlow Lite Micro's "
                            f"MicroMutableOpResolver cannot register: change the model")
        methods.append(RESOLVER_METHODS[op])
    return methods


def op_names(model: bytes) -> list[str]:
    """The distinct operators of every subgraph ('FULLY_CONNECTED', ..., or 'CUSTOM:<name>'),
    in order of first use, read from the flatbuffer with the schema bindings LiteRT ships."""
    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    found: dict[str, None] = {}
    for subgraph in parsed.subgraphs or []:
        for operator in subgraph.operators or []:
            code = parsed.operatorCodes[operator.opcodeIndex]
            # codes below 127 also live in the deprecated int8 field; larger ones only here
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = names.get(builtin, f"BUILTIN_{builtin}")
            if name == "CUSTOM":
                custom = code.customCode
                name = f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}"
            found.setdefault(name, None)
    return list(found)


def smallest_arena(model: bytes) -> int:
    """The smallest tensor arena, in bytes (a multiple of `ARENA_STEP`), in which TFLite Micro
    allocates the model and runs it once. Found by a search of probes in subprocesses, two or
    more at a time, from the figure TFLite Micro's `print_allocations` reports (which
    understates it: the planner needs room it gives back)."""
    tflm_version()  # a clear error here rather than a failed probe
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        generous = _step_up(max(10 * len(model), 1 << 20))
        ok, log = _probe(path, generous, report=True)
        if not ok:
            raise EdgeError(f"TensorFlow Lite Micro cannot run the model even in a "
                            f"{generous:,}-byte arena: {log.strip()[-500:]}")
        found = REPORTED_TOTAL.search(log)
        reported = _step_up(int(found.group(1))) if found else None
        return _search(path, generous, reported)


def allocates(model: bytes, size: int) -> bool:
    """Does TFLite Micro allocate the model in a `size`-byte arena and run it once? (Asked in a
    subprocess: a crash there is a no.)"""
    tflm_version()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        return _probe(path, size)[0]


def _search(path: Path, generous: int, reported: int | None) -> int:
    workers = max(2, min(4, os.cpu_count() or 1))
    fails, works = 0, generous  # an empty arena cannot hold anything; `generous` worked
    # First guesses around the reported figure: the smallest is that or a little above it.
    # Guesses outside what is still open are dropped; then the open range is split evenly.
    guesses = [[reported - ARENA_STEP, reported],
               [_step_up(reported + reported * k // 32) for k in (-4, -1, 1, 4)]
               ] if reported else []
    with ThreadPoolExecutor(workers) as pool:
        while works - fails > ARENA_STEP:
            sizes = [s for s in (guesses.pop(0) if guesses else []) if fails < s < works]
            sizes = sizes or _splits(fails, works, workers)
            for size, (ok, _) in zip(sizes, pool.map(lambda s: _probe(path, s), sizes),
                                     strict=True):
                if ok:
                    works = min(works, size)
                else:
                    fails = max(fails, size)
            if fails >= works:
                raise EdgeError(f"TFLite Micro allocated the model in {works:,} bytes but not "
                                f"in {fails:,}: the arena search needs a monotonic answer")
    return works


def _splits(fails: int, works: int, n: int) -> list[int]:
    steps = (works - fails) // ARENA_STEP
    inside = {fails + ARENA_STEP * max(1, min(steps - 1, round(steps * i / (n + 1))))
              for i in range(1, n + 1)}
    return sorted(inside)


def _step_up(size: int) -> int:
    return -(-size // ARENA_STEP) * ARENA_STEP


def _probe(path: Path, size: int, report: bool = False) -> tuple[bool, str]:
    """Does the model allocate in `size` bytes? Run in a subprocess, as a crash is possible."""
    command = [sys.executable, "-c", PROBE, str(path), str(size), *(["report"] if report else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if done.returncode == 0:
        return True, done.stderr
    if done.returncode == PROBE_REFUSED or done.returncode < 0:  # refused, or killed by a signal
        return False, done.stderr
    raise EdgeError(f"the TFLite Micro probe failed (exit code {done.returncode}): "
                    f"{done.stderr.strip()[-500:]}")


def recommended_arena(smallest: int) -> int:
    """The smallest arena plus `ARENA_HEADROOM`, rounded up to whole `ARENA_ROUND` bytes."""
    return math.ceil(smallest * (1 + ARENA_HEADROOM) / ARENA_ROUND) * ARENA_ROUND


def tflm_available() -> bool:
    """Is tflite-micro installed? Its wheels are for Linux x86-64 only (2026-11): elsewhere a
    bundle can go without its edge facts."""
    import importlib.util

    return importlib.util.find_spec("tflite_micro") is not None


def tflm_version() -> str:
    """The tflite-micro package's version (with the TFLite Micro commit it was built from)."""
    try:
        import tflite_micro
    except ImportError as err:
        raise EdgeError("the edge export measures the model with TensorFlow Lite Micro: "
                        "pip install tflite-micro (part of the 'train' extra: "
                        "pip install -e '.[train]')") from err
    return str(tflite_micro.__version__)


def edge_facts(model: bytes) -> dict:
    """The manifest's `edge` object: the tensor arena to declare (`tflm_arena_bytes`, the
    smallest that works plus headroom), the smallest measured, the resolver calls and the
    TFLite Micro version that measured them."""
    version = tflm_version()
    ops = model_ops(model)
    smallest = smallest_arena(model)
    return {
        "tflm_arena_bytes": recommended_arena(smallest),
        "tflm_arena_smallest": smallest,
        "tflm_ops": ops,
        "tflm_version": version,
    }


def model_header(model: bytes, facts: dict | None, name: str = "model_tflite") -> str:
    """`model_data.h`: the model as a C array in the layout of `xxd -i` (valid C11 and C++11,
    16-byte aligned, defined where `MODEL_DATA_DEFINE` is), plus the arena size and op count
    as constants and a macro that registers the ops (none of these when `facts` is None:
    `trainer.export.c_array`).

    The constants are enumerators, not `constexpr` (C11 has none, and a `static const int` is
    not a constant expression in C) nor `#define`s (an enumerator is checked by the compiler and
    cannot rewrite a user's own `kTensorArenaSize`; a clash is a plain redefinition error)."""
    guard = f"{name.upper()}_H_"
    rows = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in model[i : i + 12])
                      for i in range(0, len(model), 12))
    return (
        "// int8 digit classifier for TensorFlow Lite Micro (generated by digits-train).\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"{edge_constants(facts, name) if facts else ''}"
        "#ifdef __cplusplus\nextern \"C\" {\n#else\n#include <stdalign.h>\n#endif\n\n"
        f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n"
        "#ifdef MODEL_DATA_DEFINE\n"
        f"alignas(16) const unsigned char {name}[] = {{\n{rows}\n}};\n"
        f"const unsigned int {name}_len = {len(model)};\n"
        "#endif  // MODEL_DATA_DEFINE\n\n"
        "#ifdef __cplusplus\n}  // extern \"C\"\n#endif\n"
        f"#endif  // {guard}\n"
    )


def edge_constants(facts: dict, name: str) -> str:
    """The header's edge block: the resolver calls as a comment, `kTensorArenaSize`, `kNumOps`
    and the `<NAME>_ADD_OPS(resolver)` macro."""
    macro = f"{name.upper()}_ADD_OPS"
    ops = facts["tflm_ops"]
    calls = "".join(f"//   resolver.{op}();\n" for op in ops)
    adds = " && \\\n".join(f"   (resolver).{op}() == kTfLiteOk" for op in ops)
    return (
        "// For TensorFlow Lite Micro (also in manifest.json, \"edge\"): the arena and the ops.\n"
        "//   alignas(16) static uint8_t tensor_arena[kTensorArenaSize];\n"
        f"//   tflite::MicroMutableOpResolver<kNumOps> resolver;  // or {macro}(resolver)\n"
        f"{calls}"
        "// kTensorArenaSize: the smallest arena in which TFLite Micro allocated the model on\n"
        f"// the training machine ({facts['tflm_arena_smallest']} bytes; reference kernels, "
        f"tflite-micro {facts['tflm_version']}),\n"
        f"// plus {ARENA_HEADROOM:.0%}, rounded up to {ARENA_ROUND} bytes.\n"
        f"enum {{ kTensorArenaSize = {facts['tflm_arena_bytes']} }};\n"
        f"enum {{ kNumOps = {len(ops)} }};\n"
        f"// {macro}(resolver), C++: all of the Add calls above; true if they all succeed.\n"
        f"#define {macro}(resolver) \\\n  ({adds.lstrip()})\n\n"
    )
