#!/usr/bin/env bash
# build.sh: build eas_generate and eas_preprocess into export/cpp/build/ (or $EAS_CPP_BUILD).
#
# 1. Debian packages: the compiler, CMake, SentencePiece, nlohmann-json, libjpeg-turbo, libpng
#    (installed with apt-get when missing; that needs root, as on CI).
# 2. ONNX Runtime headers from Debian trixie's libonnxruntime-dev, unpacked (fetch_ort_headers.sh).
# 3. ONNX Runtime library: the onnxruntime pip wheel's, found through $PYTHON (default python3).
# 4. CMake; the TensorRT backend is added when CMake finds the SDK (TENSORRT_ROOT) and CUDA.
# Exit status 3: a prerequisite cannot be had here (packages not installable, headers not
# downloadable, no onnxruntime wheel); 1: the build itself failed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${EAS_CPP_BUILD:-$here/build}
python=${PYTHON:-python3}
packages=(g++ make cmake pkg-config libsentencepiece-dev nlohmann-json3-dev libjpeg-dev libpng-dev)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "error: missing Debian packages ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
        exit 3
    fi
    echo "installing ${missing[*]}" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; } || { echo "error: apt-get could not install ${missing[*]}" >&2; exit 3; }
fi

mkdir -p "$build"
"$here/fetch_ort_headers.sh" "$build/ort"

capi=$("$python" -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi")') || {
    echo "error: $python cannot import onnxruntime (pip install -r requirements.txt first, or set PYTHON)" >&2
    exit 3
}
library=$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
[[ -n $library ]] || { echo "error: no libonnxruntime.so.1.* in $capi" >&2; exit 3; }

cmake -S "$here" -B "$build/cmake" -DCMAKE_BUILD_TYPE=Release \
    -DORT_INCLUDE_DIR="$build/ort/usr/include/onnxruntime" -DORT_LIBRARY="$library" >"$build/cmake.log" 2>&1 || {
    cat "$build/cmake.log" >&2
    exit 1
}
grep -E "TensorRT backend" "$build/cmake.log" | sed 's/^-- //' >&2
cmake --build "$build/cmake" -j "${JOBS:-2}" >"$build/make.log" 2>&1 || {
    tail -n 40 "$build/make.log" >&2
    exit 1
}
echo "built $build/cmake/eas_generate (onnxruntime: $library)" >&2
