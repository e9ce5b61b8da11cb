# linformer-pt on an official PyTorch CUDA runtime image (torch is already installed there).
#   docker build -t linformer-pt .
#   docker run --gpus all -v $PWD/outputs:/workspace/outputs linformer-pt model=linformer_base
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

ENV WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
WORKDIR /workspace
COPY setup.py README.md ./
COPY linformer_pt ./linformer_pt
COPY configs ./configs
# A regular (non-editable) install: configs travel as package data (linformer_pt.configs).
RUN pip install --no-cache-dir . && rm -rf build

ENTRYPOINT ["linformer-train"]
