"""The edge export, checked against the TensorFlow Lite Micro interpreter itself (tflite-micro):
the arena it states allocates and one step less does not, the ops it lists are the model's, TFLM
computes what LiteRT's reference kernels compute, and model_data.h compiles with them.

For both architectures: the MNIST MLP bundle and the suite's CNN bundle (8x8 digits: the same
ops as the MNIST CNN, smaller tensors), so no bundle is trained for these tests alone."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from trainer import edge

if not edge.tflm_available() and (sys.platform, platform.machine()) != ("linux", "x86_64"):
    pytest.skip("tflite-micro has wheels for Linux x86-64 only", allow_module_level=True)

IMAGES = 200
_facts: dict[str, dict] = {}


@pytest.fixture(params=["mlp", "cnn"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def model(request, arch) -> bytes:
    """The int8 model of a small real bundle: the MNIST MLP, and the CNN (on the 8x8 digits,
    the suite's CNN bundle: the same ops as the MNIST CNN, smaller shapes)."""
    bundle = request.getfixturevalue("mnist_bundle" if arch == "mlp" else "digits_cnn_bundle")
    return (bundle / "model.tflite").read_bytes()


@pytest.fixture
def facts(arch, model) -> dict:
    """edge_facts, measured once per architecture."""
    if arch not in _facts:
        _facts[arch] = edge.edge_facts(model)
    return _facts[arch]


@pytest.fixture
def images(request, arch) -> np.ndarray:
    if arch == "mlp":
        return request.getfixturevalue("mnist_test_images")[0][:IMAGES]
    from trainer.data import load_digits

    return load_digits().x_test[:IMAGES]


def test_the_stated_arena_allocates_and_one_step_less_does_not(model, facts):
    smallest, recommended = facts["tflm_arena_smallest"], facts["tflm_arena_bytes"]
    assert smallest % edge.ARENA_STEP == 0
    assert recommended == edge.recommended_arena(smallest)
    assert recommended >= smallest * (1 + edge.ARENA_HEADROOM) and recommended % 1024 == 0
    # each in a subprocess: too small an arena can crash the interpreter
    assert edge.allocates(model, recommended)
    assert edge.allocates(model, smallest)
    assert not edge.allocates(model, smallest - edge.ARENA_STEP)


def test_the_ops_are_the_models_as_litert_reads_them(arch, model, facts):
    """tflite_micro's Python interpreter registers every op (PythonOpsResolver), so it cannot
    show that these ops alone suffice: compare with the ops LiteRT's interpreter lists."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    listed = list(dict.fromkeys(op["op_name"] for op in interpreter._get_ops_details()))
    assert edge.op_names(model) == listed
    assert facts["tflm_ops"] == edge.model_ops(model) == [edge.RESOLVER_METHODS[op]
                                                          for op in listed]
    layers = {"AddFullyConnected", "AddSoftmax", "AddQuantize"} | (
        {"AddConv2D", "AddMaxPool2D"} if arch == "cnn" else set())
    assert layers <= set(facts["tflm_ops"])
    assert ("AddConv2D" in facts["tflm_ops"]) == (arch == "cnn")


def test_tflm_computes_what_litert_reference_kernels_compute(model, facts, images):
    """TFLM, in the recommended arena, against LiteRT's reference kernels (its default kernels
    break ties differently). Bit for bit on nearly every image; the exceptions are all one
    rounding: TFLM's FULLY_CONNECTED requantizes with two roundings (TFLite's
    MultiplyByQuantizedMultiplier), LiteRT's reference kernel with one, so a value within a hair
    of .5 can land 1 step apart in a hidden layer, and softmax may magnify that a few steps
    (about 0.1 % of MNIST test images with these models, 1.5 % of the 8x8 digits). The class
    must be the same on every image."""
    from tflite_micro.python.tflite_micro import runtime

    micro = runtime.Interpreter.from_bytes(model, arena_size=facts["tflm_arena_bytes"])
    assert micro.get_input_details(0)["dtype"] == np.uint8
    tflm = []
    for image in images:
        micro.set_input(image[None], 0)
        micro.invoke()
        tflm.append(micro.get_output(0)[0])
    tflm = np.array(tflm)
    expected = Reference(model).predict(images)
    assert tflm.dtype == expected.dtype == np.uint8
    np.testing.assert_array_equal(tflm.argmax(axis=1), expected.argmax(axis=1))
    differ = np.nonzero((tflm != expected).any(axis=1))[0]
    assert len(differ) <= 0.05 * len(images), f"{len(differ)} of {len(images)} images differ"
    for i in differ:
        assert first_difference(model, images[i]) == ("FULLY_CONNECTED", 1), f"image {i}"


class Reference:
    """LiteRT with its reference kernels, on a whole batch."""

    def __init__(self, model: bytes, **options):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(
            model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
            **options)

    def predict(self, x: np.ndarray) -> np.ndarray:
        given = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(given["index"], x.shape)
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(given["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.interpreter.get_output_details()[0]["index"])


def first_difference(model: bytes, image: np.ndarray) -> tuple[str, int] | None:
    """The first op whose output differs between TFLM and LiteRT's reference kernels on one
    image, and by how many quantization steps at most."""
    from tflite_micro.python.tflite_micro import runtime

    micro = runtime.Interpreter.from_bytes(
        model, intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    micro.set_input(image[None], 0)
    micro.invoke()
    ref = Reference(model, experimental_preserve_all_tensors=True)
    ref.predict(image[None])
    for op in ref.interpreter._get_ops_details():
        for tensor in op["outputs"]:
            ours = np.asarray(micro.GetTensor(tensor, 0)["tensor_data"]).astype(int)
            theirs = ref.interpreter.get_tensor(tensor).astype(int).reshape(ours.shape)
            if (ours != theirs).any():
                return op["op_name"], int(np.abs(ours - theirs).max())
    return None


def test_facts_name_the_tflm_version(facts):
    from importlib.metadata import version

    assert facts["tflm_version"].startswith(version("tflite-micro"))
    assert set(facts) == {"tflm_arena_bytes", "tflm_arena_smallest", "tflm_ops", "tflm_version"}


EDGE_BLOCK = re.compile(r"// For TensorFlow Lite Micro.*?\n\n", re.DOTALL)


def test_the_header_is_the_c_array_plus_the_edge_constants(model, facts):
    """Everything but the new block is byte for byte what trainer.export.c_array writes, so
    existing users of model_data.h see nothing change."""
    from trainer import export

    header = edge.model_header(model, facts)
    block = EDGE_BLOCK.search(header).group(0)
    assert header.replace(block, "", 1) == export.c_array(model)
    assert edge.model_header(model, None) == export.c_array(model)  # no facts: no edge block
    assert f"enum {{ kTensorArenaSize = {facts['tflm_arena_bytes']} }};" in block
    assert f"enum {{ kNumOps = {len(facts['tflm_ops'])} }};" in block
    assert [f"//   resolver.{op}();" in block for op in facts["tflm_ops"]] == \
        [True] * len(facts["tflm_ops"])


# A stand-in for tflite::MicroMutableOpResolver<N> (TFLM's headers are not needed to check that
# the constants and the macro compile and say what the facts say): it records the calls.
FAKE_RESOLVER = """
#include <string>
enum { kTfLiteOk = 0, kTfLiteError = 1 };
template <unsigned int tOpCount> struct MicroMutableOpResolver {
  std::string calls;
  unsigned int added = 0;
  int Add(const char* name) {
    calls += name; calls += ' ';
    return added++ < tOpCount ? kTfLiteOk : kTfLiteError;
  }
%s};
"""
CXX_MAIN = r"""
#include <cstdint>
#include <cstdio>
#define MODEL_DATA_DEFINE
#include "model_data.h"
alignas(16) static uint8_t tensor_arena[kTensorArenaSize];
int main() {
  MicroMutableOpResolver<kNumOps> resolver;
  bool ok = MODEL_TFLITE_ADD_OPS(resolver);
  std::printf("%d %d %zu %u %d\n%s\n", static_cast<int>(kTensorArenaSize),
              static_cast<int>(kNumOps), sizeof tensor_arena, model_tflite_len, ok ? 1 : 0,
              resolver.calls.c_str());
  return 0;
}
"""
C_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include "model_data.h"
static uint8_t tensor_arena[kTensorArenaSize];
int main(void) {
  printf("%d %d %zu\n", kTensorArenaSize, kNumOps, sizeof tensor_arena);
  return 0;
}
"""


def compile_and_run(tmp_path, compiler: str, std: str, source: str, suffix: str) -> str:
    assert shutil.which(compiler), f"{compiler} is part of this machine's toolchain"
    (tmp_path / f"main{suffix}").write_text(source)
    build = subprocess.run([compiler, std, "-Wall", "-Wextra", "-pedantic", "-Werror",
                            f"main{suffix}", "-o", f"probe{suffix}"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return subprocess.run([str(tmp_path / f"probe{suffix}")], capture_output=True, text=True,
                          check=True).stdout


def test_the_header_compiles_in_cpp_and_c_with_the_stated_constants(model, facts, tmp_path):
    (tmp_path / "model_data.h").write_text(edge.model_header(model, facts))
    methods = "".join(f"  int {m}() {{ return Add(\"{m}\"); }}\n"
                      for m in sorted(set(edge.RESOLVER_METHODS.values())))
    cxx = compile_and_run(tmp_path, "g++", "-std=c++11", FAKE_RESOLVER % methods + CXX_MAIN,
                          ".cc")
    arena, ops = facts["tflm_arena_bytes"], len(facts["tflm_ops"])
    assert cxx.split("\n")[0].split() == [str(arena), str(ops), str(arena), str(len(model)), "1"]
    assert cxx.split("\n")[1].split() == facts["tflm_ops"]
    c = compile_and_run(tmp_path, "gcc", "-std=c11", C_MAIN, ".c")
    assert c.split() == [str(arena), str(ops), str(arena)]


def test_an_op_tflm_cannot_register_is_named(monkeypatch):
    monkeypatch.setattr(edge, "op_names", lambda model: ["FULLY_CONNECTED", "CUSTOM:Mystery"])
    with pytest.raises(edge.EdgeError, match="CUSTOM:Mystery"):
        edge.model_ops(b"")


def test_without_tflite_micro_the_error_says_what_to_install(monkeypatch):
    assert edge.tflm_available()
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # makes `import tflite_micro` fail
    with pytest.raises(edge.EdgeError, match="pip install tflite-micro"):
        edge.edge_facts(b"")


def test_a_trained_bundle_states_its_arena_and_ops(request, arch, facts):
    """digits-train writes the facts into the manifest's `edge` object and model_data.h."""
    import json

    bundle = request.getfixturevalue("mnist_bundle" if arch == "mlp" else "digits_cnn_bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["edge"]["tflm_ops"] == facts["tflm_ops"]
    assert manifest["edge"]["tflm_arena_bytes"] == facts["tflm_arena_bytes"]
    header = (bundle / "model_data.h").read_text()
    assert f"kTensorArenaSize = {facts['tflm_arena_bytes']}" in header
    assert f"kNumOps = {len(facts['tflm_ops'])}" in header
