#!/usr/bin/env bash
# Train the zoo-v3 probes (four normal and four PGD-2 ResNet-20s, step schedule decaying after
# epochs 7 and 21 of 28) as parallel processes sharing one GPU. Every process writes its training
# state after each epoch, so what is unfinished when TIME_LIMIT runs out resumes anywhere (CPU or
# GPU) with the same zoo_probe.py arguments (they keep --resume). Data come from $FILTERLENS_DATA.
#
#   FILTERLENS_DATA=/path/to/data TIME_LIMIT=540 scripts/zoo_gpu.sh
#   DEVICE=cpu EXTRA="--set n_train=256 --set epochs=1" PROBE_DIR=/tmp/dry scripts/zoo_gpu.sh  # dry run
set -u
cd "$(dirname "$0")/.."
dir=${PROBE_DIR:-gpu-probe}
device=${DEVICE:-cuda}
limit=${TIME_LIMIT:-540}
extra=${EXTRA:-}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS (training runs with deterministic algorithms)
mkdir -p "$dir"
start=$SECONDS
python3 -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available())"
# decode (and cache) the data once, before the processes start
python3 -c "from filterlens.data import load_dataset as l; l('cifar10', 'train'); l('cifar10', 'test')" || exit 1
echo "data ready after $((SECONDS - start)) s"
S="--set schedule=step --set milestones=[7,21] --set epochs=28 --tag ms21 --out-dir $dir --device $device --resume"
left=$((limit - (SECONDS - start)))
for s in 0 1 2 3; do
    # shellcheck disable=SC2086
    timeout -s TERM "$left" python3 scripts/zoo_probe.py cifar10_resnet20_fgsmrs_s$s --training pgd --attack-steps 2 \
        $S $extra > "$dir/pgd2_ms21_s$s.log" 2>&1 &
    # shellcheck disable=SC2086
    timeout -s TERM "$left" python3 scripts/zoo_probe.py cifar10_resnet20_normal_s$s $S $extra \
        > "$dir/normal_ms21_s$s.log" 2>&1 &
done
wait
echo "finished after $((SECONDS - start)) s"
for f in "$dir"/*.log; do echo "== $f"; tail -n 2 "$f"; done
