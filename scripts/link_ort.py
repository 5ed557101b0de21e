#!/usr/bin/env python3
"""Links ONNX Runtime's shared libraries from the installed wheel into a project folder.

The `onnxruntime` (or `onnxruntime-gpu`) wheel ships `libonnxruntime.so.<version>` and its
provider libraries under `onnxruntime/capi/`, but no unversioned `libonnxruntime.so`. This
links every library there into DIR (default `runtime/`) and adds `libonnxruntime.so`, the
path Switchboard looks at by default.
"""
import glob
import os
import sys

import onnxruntime


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else "runtime"
    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "*.so*")))
    main_lib = [p for p in libs if os.path.basename(p).startswith("libonnxruntime.so")]
    if not main_lib:
        print(f"error: no libonnxruntime.so* in {capi}", file=sys.stderr)
        return 1
    os.makedirs(dest, exist_ok=True)
    for path in libs:
        name = os.path.basename(path)
        if name.startswith("onnxruntime_pybind"):
            continue
        link = os.path.join(dest, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(path), link)
    link = os.path.join(dest, "libonnxruntime.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(main_lib[0]), link)
    print(f"ONNX Runtime {onnxruntime.__version__} linked into {dest}/ ({os.path.basename(main_lib[0])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
