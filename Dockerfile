# The nanoGPT trainer with its metrics exporter.
#   docker build -t nanogpt-monitor .                      # CPU torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t nanogpt-monitor:gpu .
# PyPI's Linux torch wheel bundles CUDA, so the second is the GPU image
# (docker-compose.yml's `gpu` profile builds it).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    NANOGPT_CACHE_DIR=/out/.cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first and on its own layer: it is by far the biggest and changes least.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

COPY pyproject.toml README.md ./
COPY nanogpt ./nanogpt
COPY exporter ./exporter
COPY nanogpt_monitor ./nanogpt_monitor
RUN pip install .

# Checkpoints (and the tokenised corpus cache) live in /out, a volume in compose.
RUN useradd --create-home --uid 1000 trainer && mkdir /out && chown trainer /out
USER trainer
VOLUME /out
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["nanogpt-train"]
CMD ["--metrics-host=0.0.0.0", "--metrics-port=8000", "--out_dir=/out"]
