#!/usr/bin/env bash
# GPU acceptance check, one GPU, under 8 minutes:
#   1. IcoUNet equivariance on CUDA in float32, all 60 rotations (scripts/gpu_check.py)
#   2. bench_conv.py (and bench_model.py when present) with --device cuda --dtype bfloat16
#   3. a short trainer=gpu run (bf16-mixed)
#   4. a 1-GPU trainer=ddp run: NCCL, the synced IcoBatchNorm path (one rank, so the all-reduce is trivial)
#   5. torch.compile of the U-Net against eager
#   6. non-deterministic CUDA ops, torch.use_deterministic_algorithms, and a trainer.deterministic=true run
# Every step runs even when an earlier one fails. Results: summary.txt, summary.json and steps.log in
# $OUT when it is set, else ./gpu_check/. Exit status: the number of failed steps.
#   bash scripts/gpu_check.sh
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
BIN=$(dirname "$PYTHON")
DEST=${OUT:-$PWD/gpu_check}
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}   # synthetic data and run folders (shared by the training runs)
mkdir -p "$DEST"
: > "$DEST/steps.log"
: > "$DEST/steps.jsonl"
failed=0

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log its output, record status and duration.
step() {
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name: $*" | tee -a "$DEST/steps.log"
    (cd "$ROOT" && timeout "$limit" "$@") > "$DEST/$name.out" 2>&1
    rc=$?
    cat "$DEST/$name.out" >> "$DEST/steps.log"
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" $((SECONDS - start)) >> "$DEST/steps.jsonl"
    echo "=== $name: exit $rc" | tee -a "$DEST/steps.log"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

TRAIN=("$BIN/icolightning-train" debug=tiny "paths.root_dir=$WORK")

{ nvidia-smi || echo "nvidia-smi not found"; "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', \
  torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } \
  >> "$DEST/steps.log" 2>&1
step equivariance 120 "$PYTHON" scripts/gpu_check.py equivariance --device cuda
step bench_conv 150 "$PYTHON" scripts/bench_conv.py --device cuda --dtype bfloat16 --level 5 6 --repeats 10
if [ -f "$ROOT/scripts/bench_model.py" ]; then
    step bench_model 150 "$PYTHON" scripts/bench_model.py --device cuda --dtype bfloat16
fi
step train_gpu 150 "${TRAIN[@]}" trainer=gpu name=gpu
step train_ddp_1gpu 150 "${TRAIN[@]}" trainer=ddp trainer.devices=1 name=ddp1
step compile 240 "$PYTHON" scripts/gpu_check.py compile --device cuda
step determinism 120 "$PYTHON" scripts/gpu_check.py determinism --device cuda
step train_gpu_deterministic 150 "${TRAIN[@]}" trainer=gpu trainer.deterministic=true name=deterministic

# The summary: every step's status and time, the JSON lines the Python checks printed, and the final
# test metrics of the training runs.
"$PYTHON" - "$DEST" "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

dest, work = Path(sys.argv[1]), Path(sys.argv[2])
steps = [json.loads(line) for line in (dest / "steps.jsonl").read_text().splitlines()]
for entry in steps:
    out = (dest / f"{entry['step']}.out").read_text(errors="replace").splitlines()
    results = [json.loads(line) for line in out if line.startswith("{\"check\"")]
    if results:
        entry["result"] = results[-1]
    run = work / "outputs" / "train" / {"train_gpu": "gpu", "train_ddp_1gpu": "ddp1",
                                        "train_gpu_deterministic": "deterministic"}.get(entry["step"], "-")
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
        entry["result"] = {k: metrics.get(k) for k in ("fit_seconds", "global_step")} | {
            k: v for k, v in metrics.get("test", {}).items() if k in ("test/mAP", "test/mean_iou", "test/loss")}
    if entry["rc"] != 0:
        entry["tail"] = out[-5:]
(dest / "summary.json").write_text(json.dumps(steps, indent=2) + "\n")
lines = [f"{e['step']:<26} {'ok' if e['rc'] == 0 else 'FAILED (exit %d)' % e['rc']:<16} {e['seconds']:5d} s"
         + (f"  {json.dumps(e['result'])}" if "result" in e else "") for e in steps]
(dest / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
rm -f "$DEST"/*.out "$DEST/steps.jsonl"
echo "gpu_check: $failed failed step(s); summary in $DEST"
exit "$failed"
