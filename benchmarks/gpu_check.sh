#!/usr/bin/env bash
# GPU check for issue #7 (docs/gpu.md): one prepared run, under 5 minutes on an H100/H200.
#
#   benchmarks/gpu_check.sh [OUT]        # OUT defaults to $OUT, else ./gpu-check
#
# 1. a fresh venv with seqport[gpu,export,hf] (onnxruntime-gpu, never beside onnxruntime) + torch;
# 2. exports the bundled translator and a GPT-2-size model (GPT2Config defaults, random weights),
#    each in fp32 and fp16, and the GPT-2 in fp16 with --kv-cache preallocated (buffers written
#    in place on the device);
# 3. parity on CUDA: the device loop (IOBinding, on-device selection) against the plain loop;
# 4. `seqport bench` for onnxruntime CUDA, onnxruntime TensorRT and PyTorch CUDA eager at
#    batch 1 and 16, writing JSON Lines and a markdown table to OUT.
# A step that fails is logged in OUT/failures.txt and the run goes on, so one missing piece
# (e.g. no TensorRT libraries) does not hide the other figures.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-${OUT:-$PWD/gpu-check}}"
WORK="$(mktemp -d -t seqport-gpu-XXXXXX)"
mkdir -p "$OUT"
: >"$OUT/failures.txt"
exec > >(tee "$OUT/log.txt") 2>&1

step() { echo "== $*"; }
fail() { echo "FAILED: $*" | tee -a "$OUT/failures.txt"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || fail "nvidia-smi"
python3 -m venv "$WORK/venv" || { fail "venv"; exit 1; }
PY="$WORK/venv/bin/python"
SEQPORT="$WORK/venv/bin/seqport"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$REPO[gpu,export,hf]" || { fail "pip install seqport[gpu,export,hf]"; exit 1; }
"$PY" -m pip install -q tensorrt-cu12 || fail "pip install tensorrt-cu12 (TensorRT rows will fail)"
if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then
    fail "the CPU onnxruntime got installed beside onnxruntime-gpu; removing it"
    "$PY" -m pip uninstall -y -q onnxruntime onnxruntime-gpu && "$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]>=1.19"
fi
# TensorRT's pip wheel puts its libraries in site-packages: onnxruntime finds them on the path
TRT_LIBS="$("$PY" -c 'import tensorrt_libs, os; print(os.path.dirname(tensorrt_libs.__file__))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="${TRT_LIBS:+$TRT_LIBS:}${LD_LIBRARY_PATH:-}"
"$PY" -c 'import onnxruntime as o, torch; print(o.__version__, o.get_available_providers(), torch.__version__, torch.cuda.is_available())' \
    | tee "$OUT/versions.txt"

step "checkpoints"
"$PY" - "$WORK" <<'EOF' || fail "checkpoints"
import shutil, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel
from seqport.export.bundled import bundled_checkpoint

work = Path(sys.argv[1])
shutil.copytree(bundled_checkpoint(), work / "translator")
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small geometry, seeded random weights
model.save_pretrained(work / "gpt2")
tok = Tokenizer(models.BPE())
tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
tok.save(str(work / "gpt2" / "tokenizer.json"))
EOF

step "export fp32 and fp16"
for name in translator gpt2; do
    for dtype in fp32 fp16; do
        "$SEQPORT" export "$WORK/$name" "$WORK/art-$name-$dtype" --dtype "$dtype" -q \
            || fail "export $name $dtype"
        cp "$WORK/art-$name-$dtype/seqport.json" "$OUT/manifest-$name-$dtype.json" 2>/dev/null || true
    done
done

"$SEQPORT" export "$WORK/gpt2" "$WORK/art-gpt2-fp16-prealloc" --dtype fp16 --kv-cache preallocated -q \
    || fail "export gpt2 fp16 preallocated"

step "parity on CUDA: device loop vs plain loop"
"$PY" - "$WORK" "$OUT" <<'EOF' || fail "parity"
import json, sys
from pathlib import Path
import seqport.engine as sp
from seqport.engine.runtime import RuntimeOptions

work, out = Path(sys.argv[1]), Path(sys.argv[2])
cases = {"greedy": {}, "sample": dict(do_sample=True, top_k=40, seed=1), "beam": dict(num_beams=4)}
report = []
for art in sorted(work.glob("art-*")):
    if not (art / "seqport.json").is_file():
        continue
    plain = sp.load(art, provider="cuda", options=RuntimeOptions(device_loop=False))
    device = sp.load(art, provider="cuda", options=RuntimeOptions(device_loop=True))
    batch = [list(range(5, 5 + n)) + list(plain.manifest.special_ids.eos) for n in (7, 12, 3)]
    for case, options in cases.items():
        config = plain.default_config.replace(max_new_tokens=32, **options)
        a, b = plain.generate_ids(batch, config), device.generate_ids(batch, config)
        same = sum(x.sequences[0].ids == y.sequences[0].ids for x, y in zip(a, b))
        worst = max(abs(x.sequences[0].score - y.sequences[0].score) for x, y in zip(a, b))
        row = dict(artifact=art.name, case=case, identical=f"{same}/{len(batch)}", max_score_diff=worst)
        print(row)
        report.append(row)
(out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
EOF

step "seqport bench"
for art in "$WORK"/art-*; do
    [ -f "$art/seqport.json" ] || continue
    name="$(basename "$art")"; name="${name#art-}"
    timeout 120 "$SEQPORT" bench "$art" --runtimes onnxruntime,torch --provider cuda --batch-sizes 1,16 \
        --new-tokens 64 --warmup 1 --repeats 3 -q --json "$OUT/bench-$name-cuda.jsonl" \
        >"$OUT/bench-$name-cuda.md" || fail "bench $name cuda"
    timeout 150 "$SEQPORT" bench "$art" --runtimes onnxruntime --provider tensorrt --batch-sizes 1,16 \
        --new-tokens 64 --warmup 1 --repeats 3 -q --json "$OUT/bench-$name-tensorrt.jsonl" \
        >"$OUT/bench-$name-tensorrt.md" || fail "bench $name tensorrt"
done

{
    echo "# seqport GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    cat "$OUT/versions.txt"
    for table in "$OUT"/bench-*.md; do
        [ -s "$table" ] || continue
        echo
        echo "## $(basename "$table" .md)"
        echo '```'
        cat "$table"
        echo '```'
    done
    echo
    echo "## failures"
    echo
    cat "$OUT/failures.txt"
} >"$OUT/summary.md"
echo "wrote $OUT/summary.md"
rm -rf "$WORK"
[ ! -s "$OUT/failures.txt" ]
