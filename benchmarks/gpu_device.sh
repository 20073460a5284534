#!/bin/bash
# The GPU check (issue 15 target 7) on a lent device machine, prepared here and run there.
#
#   bash benchmarks/gpu_device.sh prepare   # here: wheels into .whl/ (git-ignored), split
#   bash benchmarks/gpu_device.sh run       # there: install them, check, benchmark -> $OUT
#
# The device image has onnxruntime without CUDA, CUDA 13 and cuDNN 9 as pip's nvidia-*
# packages (PyTorch's), h5py, pyarrow, click and rich, and reaches no index. So
# onnxruntime-gpu (built for CUDA 13), mpi4py and the mpich wheel travel as wheels; the
# onnxruntime-gpu wheel (~256 MB) is over one call's 64 MiB, so it travels in parts of
# 60 MiB, one carried per call while the machine stays warm (benchmarks/README.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}

prepare() {
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" || echo '/.whl/' >> "$exclude"
    mkdir -p .whl/small .whl/big
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                     --platform manylinux2014_x86_64 --platform manylinux1_x86_64
                     --platform manylinux_2_5_x86_64)
    local pip=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}"
               --implementation cp "${platforms[@]}")
    "${pip[@]}" -d .whl/small mpi4py mpich
    "${pip[@]}" -d .whl/big "$ORT_GPU"
    (cd .whl/big && for w in *.whl; do split -b 60M -d "$w" "$w.part" && rm "$w"; done)
    ls -la .whl/small .whl/big
}

run() {
    local out=${OUT:-/tmp/gpu-out}
    mkdir -p "$out"
    (cd .whl/big && for w in $(ls *.part* | sed 's/\.part[0-9]*$//' | sort -u); do
        cat "$w".part* > "/tmp/$w"; done)
    # a venv over the image's packages: the mpich wheel's libmpi lands in its lib/, where
    # mpi4py looks (pip --target leaves a wheel's data out), and onnxruntime-gpu shadows
    # the image's onnxruntime
    python3 -m venv --system-site-packages /tmp/venv
    /tmp/venv/bin/python -m pip install -q --no-index --no-deps --no-compile \
        .whl/small/*.whl /tmp/*.whl
    export PATH=/tmp/venv/bin:$PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
    python -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" \
        | tee -a "$out/gpu.txt"
    python benchmarks/gpu.py --rows "${ROWS:-2000000}" --repeat "${REPEAT:-3}" \
        --batch-rows ${BATCH_ROWS:-16384 131072} --ranks ${RANKS:-1 2} \
        2>&1 | tee "$out/gpu.log"
}

"$@"
