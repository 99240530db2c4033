#!/usr/bin/env bash
# Run benchmarks/gpu_throughput.py on a GPU machine whose Python has torch, transformers, peft,
# accelerate, safetensors, ... but neither diffusers nor this package: from the repo root,
#
#   bash benchmarks/gpu_run.sh [gpu_throughput.py options]
#
# It installs the wheels in .whl/ into /tmp/site without an index, puts /tmp/site and the repo
# on PYTHONPATH, and runs the benchmark under a timeout (GPU_TIMEOUT seconds, default 420; the
# full run is estimated at 2-3 minutes on one H200, not yet measured). The table goes to stdout and, with OUT set, to
# $OUT/gpu_throughput.json. The wheels (.whl/ is not tracked: echo /.whl/ >> .git/info/exclude)
# are diffusers and requests with its pure-python dependencies, fetched where there is network:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation py --abi none --platform any -d .whl diffusers==0.42.1 \
#     requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 \
#     charset_normalizer==3.5.3
#
# (diffusers' other dependencies, filelock and regex, come with transformers.) With the device
# tool: run(command="bash benchmarks/gpu_run.sh", carry=[".whl"]).
set -euo pipefail
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  python3 -m pip install --quiet --no-index --no-deps --target /tmp/site "${wheels[@]}"
else
  echo "no wheels in .whl/: using the installed packages" >&2
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)"
exec timeout "${GPU_TIMEOUT:-420}" python3 benchmarks/gpu_throughput.py "$@"
