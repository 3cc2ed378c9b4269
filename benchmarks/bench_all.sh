#!/bin/sh
# Regenerates every section of docs/BENCHMARKS.md (about 2 hours on 2 CPU cores: on 2026-12-02 the tiny line took 8 min, the tiny-floor line 6, dim 1024 9, the 7B-width K = L/4 line 27, dim 512 21, the 7B-width line 15 and the line against llama.cpp 13; the 7B-width ONNX Runtime line, with 7 exports of ~4 min each, 35 (19 on 12-01, before the A/A control) and is its own run, to fit in 24 GiB; each command
# rewrites only its own size's section, so any one line can be rerun alone).
set -e
# The C++ app is built first (export/cpp/build.sh): it runs the app's loop (--backends ort-cpp); without it those lines say why they are skipped. Not at 7B
# width: each variant's app holds a pre-packed copy of its ~4 GB of weights beside the mapped file,
# too many for 24 GiB with three variants beside the Python process's models.
bash export/cpp/build.sh || echo "bench_all: the C++ app did not build; its ort-cpp lines will be skipped" >&2
python run.py bench --size tiny --skip 0 2 4 --prompt 128 --generate 64 --backends eager compile ort ort-cpp llama.cpp-f32 llama.cpp-f16 --rounds 25 --profile --out docs/BENCHMARKS.md
# At tiny size static merged's cost over the floor (1-3 %) sits at the 3 % bar, and 25 rounds of six
# variants leave intervals of +-1 point that straddle it: 60 rounds of base, static merged, the floor
# and its A/A control alone, for the backends of the tiny line that run our graphs.
python run.py bench --size tiny --skip 2 4 --prompt 128 --generate 64 --backends eager compile ort ort-cpp --variants base static floor --rounds 60 --section tiny-floor --out docs/BENCHMARKS.md
python run.py bench --size bench --skip 2 4 --prompt 128 1984 --generate 32 --backends eager ort ort-cpp llama.cpp-f32 llama.cpp-f16 --rounds 9 --profile --out docs/BENCHMARKS.md
python run.py bench --size bench-1024 --skip 2 4 --prompt 128 --generate 32 --backends eager ort ort-cpp llama.cpp-f32 llama.cpp-f16 --rounds 5 --out docs/BENCHMARKS.md
python run.py bench --size 7b-width --layers 4 --skip 1 2 --prompt 128 --generate 16 --backends eager llama.cpp-f32 llama.cpp-f16 --rounds 9 --profile --out docs/BENCHMARKS.md
python run.py bench --size 7b-width --layers 4 --skip 1 2 --prompt 128 --generate 16 --backends ort --variants base static floor --rounds 7 --section 7b-width-ort --out docs/BENCHMARKS.md
# K = L/4 at 7B width saves ~8 % of the decode bytes, so telling 90 % of that saving apart takes the
# speed-up to within ~1 %: 25 rounds of base, static merged and the floor alone, both backends.
python run.py bench --size 7b-width --layers 4 --skip 1 --prompt 128 --generate 16 --backends eager ort --variants base static floor --rounds 25 --section 7b-width-quarter --out docs/BENCHMARKS.md
# The same K against llama.cpp F32: at 7B width both decode at this machine's memory bandwidth, so
# EAS-1's ~8 % fewer bytes are the whole margin, and 9 rounds (the 7b-width line) do not resolve it.
python run.py bench --size 7b-width --layers 4 --skip 1 --prompt 128 --generate 16 --backends eager llama.cpp-f32 --variants base static floor --rounds 25 --section 7b-width-versus --out docs/BENCHMARKS.md
