"""model_data.h, the int8 model as a C array for TensorFlow Lite Micro, compiled for real."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include "model_data.h"
unsigned long crc(const unsigned char *p, unsigned int n);
int main(void) {
  printf("%u %lu %d\n", model_tflite_len, crc(model_tflite, model_tflite_len),
         (int)((uintptr_t)model_tflite % 16));
  return 0;
}
"""
# The file that defines the array; crc32 here so main.c only sees the declarations.
DEFINE = r"""
#define MODEL_DATA_DEFINE
#include "model_data.h"
#include "model_data.h"  /* the include guard makes a second include harmless */
unsigned long crc(const unsigned char *p, unsigned int n) {
  unsigned long c = 0xFFFFFFFFUL;
  for (unsigned int i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320UL & (0UL - (c & 1UL)));
  }
  return c ^ 0xFFFFFFFFUL;
}
"""


@pytest.mark.parametrize("compiler, std, suffix", [("gcc", "-std=c11", ".c"),
                                                    ("g++", "-std=c++11", ".cc")])
def test_header_links_from_two_files_and_holds_the_model(digits_bundle, tmp_path, compiler, std,
                                                         suffix):
    assert shutil.which(compiler), f"{compiler} is part of this machine's toolchain"
    shutil.copy(digits_bundle / "model_data.h", tmp_path)
    (tmp_path / f"main{suffix}").write_text(MAIN)
    (tmp_path / f"define{suffix}").write_text(DEFINE)
    build = subprocess.run([compiler, std, "-Wall", "-Wextra", "-pedantic", "-Werror",
                            f"main{suffix}", f"define{suffix}", "-o", "probe"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True)
    model = Path(digits_bundle / "model.tflite").read_bytes()
    assert out.stdout.split() == [str(len(model)), str(zlib.crc32(model)), "0"]
